"""Routes a normalised call to the reference or to the Triton kernel of the same name.

Both backends expose the same function names with the same normalised signatures (the argument
handling in functional.py has already run). A loss without a kernel yet runs its reference under
every backend; `has_kernel` says which do, for the README table and the fuzzer. A call in
dtypes the kernels do not compute in (`_args.kernels_take`: complex, or an integer input) runs
the reference too, whose torch operations promote as torch does.
"""
import importlib

from . import _args, _backend


class KernelDeclined(Exception):
    """Raised by a kernel function, before it launches anything, for a call outside what the
    kernel supports (say, more tags than its register tiles hold): the reference runs instead.
    Kernels never import the reference themselves; this keeps the fallback here."""


def has_kernel(name):
    kernels = importlib.import_module("fusedloss.triton_kernels")
    return name in kernels.KERNELS


def call(name, device, *args, **kwargs):
    """Run loss `name` on the backend chosen for tensors on `device`."""
    if _backend.resolve(device) == "triton" and _args.kernels_take([*args, *kwargs.values()]):
        kernels = importlib.import_module("fusedloss.triton_kernels")
        kernel = kernels.KERNELS.get(name)
        if kernel is not None:
            try:
                return kernel(*args, **kwargs)
            except KernelDeclined:
                pass
    reference = importlib.import_module("fusedloss.reference")
    return getattr(reference, name)(*args, **kwargs)
