"""Which implementation runs a loss: the Triton kernels or the PyTorch reference.

The choice is made per call from the backend setting and the device of the inputs, so one
process can mix CUDA tensors (kernels) and CPU tensors (reference, or the Triton interpreter).
"""
import contextlib
import os

import torch

BACKENDS = ("auto", "triton", "reference")

_current = None  # None until first asked: then read from FUSEDLOSS_BACKEND


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown fusedloss backend {name!r}; valid backends are {', '.join(BACKENDS)}")
    return name


def get_backend():
    """The backend in force: 'auto' (default), 'triton' or 'reference'."""
    global _current
    if _current is None:
        _current = _check_name(os.environ.get("FUSEDLOSS_BACKEND", "auto").strip().lower() or "auto")
    return _current


def set_backend(name):
    """Select the backend for every later call ('auto', 'triton' or 'reference')."""
    global _current
    _current = _check_name(name)


@contextlib.contextmanager
def use_backend(name):
    """Run the body with the given backend, restoring the previous one afterwards."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def interpreting():
    """True when Triton runs through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(device):
    """'triton' or 'reference' for inputs on `device`, following the backend rules of docs/design.md."""
    backend = get_backend()
    if backend == "reference":
        return "reference"
    on_gpu = torch.device(device).type == "cuda"
    if backend == "auto":
        return "triton" if on_gpu or interpreting() else "reference"
    if not on_gpu and not interpreting():
        raise RuntimeError(
            "fusedloss backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton "
            "is imported to run the kernels on the CPU through the Triton interpreter")
    return "triton"
