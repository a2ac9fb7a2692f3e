"""Peak memory of linear_cross_entropy's forward + backward, counted on the CPU.

The issue's size (N = 8192 tokens, H = 2304, V = 256000, bf16) is far beyond what the Triton
interpreter can compute, so the host code runs on tensors of the `meta` device (shapes and
dtypes, no values) with the GPU's blocks, and the device primitives it calls, which on a GPU
write into buffers given to them and allocate nothing, are replaced by stand-ins that check
their operands' shapes and allocate nothing either: the row kernel's launches, the matmuls
(`_matmul_into`: cuBLAS into a given output) and the backward's in-place scaling. Every storage
an aten op creates is followed from its creation to its release (a TorchDispatchMode and a weak
reference to the storage); the peak of the live bytes leaves out the inputs and the gradients
the call returns. tests/test_kernel_linear_cross_entropy_memory.py runs the same accounting on
a real interpreter run at a small size, where the primitives run (what they allocate inside,
the interpreter's copies and the CPU's operand upcasts, is not counted: a GPU makes neither;
the reference cycles through which the interpreter keeps its arguments alive are collected),
and requires it to equal this model's prediction, so the model cannot drift from the code.

    python benchmarks/lce_memory.py    # the peak at the issue's size, for each reduction
"""
import contextlib
import gc
import os
import sys

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

MIB = 2**20
BUDGET = 256 * MIB  # docs/design.md, Performance targets
ISSUE_SIZE = dict(num_rows=8192, features=2304, num_classes=256000, dtype=torch.bfloat16)


def _storage(tensor):
    return tensor.untyped_storage()


class _LiveStorages(TorchDispatchMode):
    """Records when each storage made by an aten op appears and when it is released."""

    def __init__(self, untracked):
        super().__init__()
        self.untracked = {_storage(t)._cdata for t in untracked}
        self.live = {}  # storage address -> (id, weak reference, bytes)
        self.events = []  # (id, +bytes at creation / -bytes at release)
        self.paused = False

    def _sweep(self):
        for address, (ident, ref, size) in list(self.live.items()):
            if ref.expired():
                del self.live[address]
                self.events.append((ident, -size))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            self._sweep()
            for value in torch.utils._pytree.tree_leaves(out):
                if torch.is_tensor(value):
                    self._add(value)
        return out

    def _add(self, tensor):
        storage = _storage(tensor)
        address = storage._cdata
        if address in self.untracked or address in self.live:
            return
        ident = len(self.events)
        self.live[address] = (ident, StorageWeakRef(storage), storage.nbytes())
        self.events.append((ident, storage.nbytes()))

    def peak(self, excluded):
        """The largest live total over the run, leaving out the storages of `excluded` (alive)."""
        self._sweep()
        left_out = {self.live[_storage(t)._cdata][0] for t in excluded
                    if _storage(t)._cdata in self.live}
        live = peak = 0
        for ident, change in self.events:
            if ident not in left_out:
                live += change
                peak = max(peak, live)
        return peak


@contextlib.contextmanager
def _primitives(lce, precomputed, tracker, meta):
    """The device primitives as stand-ins (meta) or run with the tracker paused (a real run)."""
    def paused(function):
        def run(*args, **kwargs):
            tracker.paused = True
            try:
                return function(*args, **kwargs)
            finally:
                gc.collect(1)  # the interpreter's fresh reference cycles hold its arguments
                tracker.paused = False
        return run

    saved = (lce.launch_row_kernel, lce._matmul_into, precomputed.scale_in_place, lce.loss_dtype)
    if meta:
        # the loss dtype as on CUDA (autocast has no meta device)
        stand_ins = (_launch_stand_in, _matmul_stand_in, lambda grad, grad_output: grad,
                     lambda dtype, device: saved[3](dtype, "cuda"))
    else:
        stand_ins = (*[paused(f) for f in saved[:3]], saved[3])
    lce.launch_row_kernel, lce._matmul_into, precomputed.scale_in_place, lce.loss_dtype = stand_ins
    try:
        yield
    finally:
        lce.launch_row_kernel, lce._matmul_into, precomputed.scale_in_place, lce.loss_dtype = saved


def _launch_stand_in(logits, target, weight, grad, loss, lse, denominator, *, stats=None,
                     token_scale=None, **options):
    rows = logits.shape[0]
    assert logits.dim() == 3 and stats is not None and stats.shape[0] == rows, logits.shape
    assert grad is None or grad.shape == logits.shape, (grad.shape, logits.shape)
    assert loss.shape[0] == rows and (lse is None or lse.shape == (rows,))
    assert token_scale is None or token_scale.shape == (rows,)


def _matmul_stand_in(out, a, b, addend=None):
    assert out.shape == (a.shape[0], b.shape[1]) and a.shape[1] == b.shape[0], (out.shape, a.shape,
                                                                               b.shape)
    assert addend is None or torch.broadcast_shapes(addend.shape, out.shape) == out.shape


def peak_bytes(x, linear_weight, target, linear_bias=None, chunk=None, **options):
    """Peak bytes beyond the inputs and the returned gradients of the kernel entry's forward +
    backward (grad_output 1, as `loss.backward()`), with the logits blocks of `chunk` (default:
    the GPU's); tensors on `meta` run the model, CPU tensors the interpreter."""
    from fusedloss.triton_kernels import _precomputed_gradient as precomputed
    from fusedloss.triton_kernels import linear_cross_entropy as lce
    inputs = [t for t in (x, linear_weight, target, linear_bias) if t is not None]
    differentiated = [t for t in inputs if t.requires_grad]
    saved_chunk, lce.CHUNK = lce.CHUNK, lce.GPU_CHUNK if chunk is None else chunk
    tracker = _LiveStorages(inputs)
    try:
        with _primitives(lce, precomputed, tracker, x.device.type == "meta"), tracker:
            loss = lce.linear_cross_entropy(x, linear_weight, target, linear_bias=linear_bias,
                                            **options)
            loss = loss[0] if isinstance(loss, tuple) else loss
            grads = torch.autograd.grad(loss, differentiated, torch.ones_like(loss))
            return tracker.peak(grads)
    finally:
        lce.CHUNK = saved_chunk


def meta_problem(num_rows, features, num_classes, dtype, bias=False):
    """Inputs of the given size on the meta device, every float one requiring grad."""
    def tensor(*shape):
        return torch.empty(shape, dtype=dtype, device="meta", requires_grad=True)
    target = torch.empty(num_rows, dtype=torch.int64, device="meta")
    return (tensor(num_rows, features), tensor(num_classes, features), target,
            tensor(num_classes) if bias else None)


def issue_size_peaks():
    """reduction -> peak MiB at the issue's size with the GPU's blocks."""
    peaks = {}
    for reduction in ("mean", "none"):
        x, w, target, _ = meta_problem(**ISSUE_SIZE)
        peaks[reduction] = peak_bytes(x, w, target, reduction=reduction) / MIB
    return peaks


def main():
    for reduction, peak in issue_size_peaks().items():
        print(f"linear_cross_entropy N=8192 H=2304 V=256000 bf16 reduction={reduction}: "
              f"peak {peak:.1f} MiB beyond the inputs and the returned gradients (budget "
              f"{BUDGET // MIB} MiB; GPU blocks, meta model)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
