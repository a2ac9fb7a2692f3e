"""Routes a normalised call to the reference or to the Triton kernel of the same name.

Both backends expose the same function names with the same normalised signatures (the argument
handling in functional.py has already run). A loss without a kernel yet runs its reference under
every backend; `has_kernel` says which do, for the README table and the fuzzer.
"""
import importlib

from . import _backend


def __getattr__(name):
    # KernelDeclined lives beside the kernels (triton_kernels/_declined.py, which they raise
    # without importing this module); re-exported lazily, as importing that package imports triton
    if name == "KernelDeclined":
        return importlib.import_module("fusedloss.triton_kernels._declined").KernelDeclined
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def has_kernel(name):
    kernels = importlib.import_module("fusedloss.triton_kernels")
    return name in kernels.KERNELS


def call(name, device, *args, **kwargs):
    """Run loss `name` on the backend chosen for tensors on `device`."""
    if _backend.resolve(device) == "triton":
        kernels = importlib.import_module("fusedloss.triton_kernels")
        kernel = kernels.KERNELS.get(name)
        if kernel is not None:
            try:
                return kernel(*args, **kwargs)
            except __getattr__("KernelDeclined"):  # the kernel cannot take it: the reference runs
                pass
    reference = importlib.import_module("fusedloss.reference")
    return getattr(reference, name)(*args, **kwargs)
