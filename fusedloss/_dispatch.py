"""Routes a normalised call to the reference or to the Triton kernel of the same name.

Both backends expose the same function names with the same normalised signatures (the argument
handling in functional.py has already run). A loss without a kernel yet runs its reference under
every backend; `has_kernel` says which do, for the README table and the fuzzer. A call in
dtypes the kernels do not compute in (`_args.kernels_take`: complex, or an integer input) runs
the reference too, whose torch operations promote as torch does.

Under torch.autocast both backends return a 16-bit loss in float32 (torch's policy for its
losses; triton_kernels/_autocast.py has the rule and why): the kernels read the 16-bit inputs
as they are and return float32 themselves; the reference, like torch, runs on float32 copies
with autocast off inside.
"""
import importlib

import torch

from . import _args, _backend, reference


def __getattr__(name):
    # KernelDeclined lives beside the kernels (triton_kernels/_declined.py, which they raise
    # without importing this module); re-exported lazily, as importing that package imports triton
    if name == "KernelDeclined":
        return importlib.import_module("fusedloss.triton_kernels._declined").KernelDeclined
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def has_kernel(name):
    kernels = importlib.import_module("fusedloss.triton_kernels")
    return name in kernels.KERNELS


def _float32_if_16_bit(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def _reference(name, device, args, kwargs):
    function = getattr(reference, name)
    device_type = torch.device(device).type
    if not torch.is_autocast_enabled(device_type):
        return function(*args, **kwargs)
    with torch.autocast(device_type, enabled=False):
        return function(*map(_float32_if_16_bit, args),
                        **{key: _float32_if_16_bit(value) for key, value in kwargs.items()})


def call(name, device, *args, **kwargs):
    """Run loss `name` on the backend chosen for tensors on `device`."""
    if _backend.resolve(device) == "triton" and _args.kernels_take([*args, *kwargs.values()]):
        kernels = importlib.import_module("fusedloss.triton_kernels")
        kernel = kernels.KERNELS.get(name)
        if kernel is not None:
            try:
                return kernel(*args, **kwargs)
            except __getattr__("KernelDeclined"):  # the kernel cannot take it: the reference runs
                pass
    return _reference(name, device, args, kwargs)
