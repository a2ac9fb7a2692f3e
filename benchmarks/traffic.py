"""Bytes each loss moves, forward + backward, counted on the CPU with the GPU's launch sizes.

The loss is memory-bound, so its speed on a GPU is the bytes it moves; this counts them without
one. Each call runs forward and backward (torch.autograd.grad with grad_output = 1, as
`loss.backward()` does) through Triton's interpreter with the GPU's block sizes
(FUSEDLOSS_LAUNCH_PARAMS=gpu), and counts:
- kernel traffic: every lane of every tl.load / tl.store (and atomic) that the mask lets
  through, times its element size. Every access counts, re-reads of a row included: no cache is
  modelled, so a second sweep over a row shows as a second read of it;
- torch traffic: every aten op outside the kernels (TorchDispatchMode), its tensor inputs read
  and its outputs written (`empty*` write nothing; views and metadata ops move nothing and are
  not counted as ops);
- launches (kernels) and torch ops (non-view aten ops, autograd's own included).
Traffic is shown in units of the call's big tensor (the logits, or the input), beside the
family's bound: what the math must move (cross entropy: read the logits, write the gradient = 2,
an ignored token only the write; pointwise: read input and target, write the gradient = 3).

    python benchmarks/traffic.py            # the table
    python benchmarks/traffic.py --check    # and exit 1 where a call moves more than its ceiling
    python benchmarks/traffic.py --markdown # the table as Markdown (for the README)

`--check` (CI runs it) holds every call to its ceiling below: the traffic measured when the
ceiling was set, so a change that adds a pass fails CI. Lower a ceiling when a kernel improves.
"""
import argparse
import contextlib
import dataclasses
import math
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
os.environ["FUSEDLOSS_LAUNCH_PARAMS"] = "gpu"

import numpy  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

import fusedloss.functional as F  # noqa: E402
from fusedloss import _args  # noqa: E402
import lce_memory  # noqa: E402


@dataclasses.dataclass
class Traffic:
    kernel_read: int = 0
    kernel_written: int = 0
    torch_read: int = 0
    torch_written: int = 0
    launches: int = 0
    torch_ops: int = 0

    @property
    def total(self):
        return self.kernel_read + self.kernel_written + self.torch_read + self.torch_written


_counter = None     # the Traffic being filled, while a measurement runs
_in_kernel = False  # the interpreter's own host copies around a launch are not the kernel's


def _element_bytes(pointers):
    return pointers.get_element_ty().primitive_bitwidth // 8


def _lanes(pointers, mask):
    if mask is None:
        return pointers.data.size
    return int(numpy.broadcast_to(mask.data, pointers.data.shape).sum())


def _counted(method, reads, writes, pointer_position, mask_position):
    """`method` of the interpreter's builder, adding the lanes it moves to the counter."""
    def counted(builder, *args, **kwargs):
        if _counter is not None:
            pointers = args[pointer_position]
            mask = args[mask_position] if mask_position is not None else None
            moved = _lanes(pointers, mask) * _element_bytes(pointers)
            _counter.kernel_read += moved * reads
            _counter.kernel_written += moved * writes
        return method(builder, *args, **kwargs)
    return counted


# builder method -> (reads, writes, position of the pointers, position of the mask); the leading
# arguments are the same in triton 3.6 and 3.9 (create_load / create_store call the masked ones)
_MEMORY_OPS = {
    "create_masked_load": (1, 0, 0, 1),
    "create_masked_store": (0, 1, 0, 2),
    "create_atomic_rmw": (1, 1, 1, 3),
    "create_atomic_cas": (1, 1, 0, None),
}


def _install_kernel_counters():
    """Wrap the interpreter's memory ops and its launch."""
    builder = interpreter.InterpreterBuilder
    for name, positions in _MEMORY_OPS.items():
        setattr(builder, name, _counted(getattr(builder, name), *positions))
    run = interpreter.InterpretedFunction.run

    def launch(self, *args, **kwargs):
        global _in_kernel
        if _counter is not None and not kwargs.get("warmup"):
            _counter.launches += 1
        _in_kernel = True
        try:
            return run(self, *args, **kwargs)
        finally:
            _in_kernel = False
    interpreter.InterpretedFunction.run = launch


def _touches_tensors(args, kwargs, out):
    """Dtype arithmetic such as torch.promote_types dispatches as an aten op too, but takes and
    returns no tensor: nothing is launched or moved on any device, so it is not counted."""
    leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
    return any(isinstance(value, torch.Tensor) for value in leaves)


def _is_view(func):
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def _tensor_bytes(values):
    return sum(v.numel() * v.element_size() for v in values if torch.is_tensor(v))


# ops whose first argument is only written, never read
_OVERWRITE_SELF = {"copy_", "fill_", "zero_"}
_NOTHING_WRITTEN = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class _TorchTraffic(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (_counter is not None and not _in_kernel and not _is_view(func)
                and _touches_tensors(args, kwargs, out)):
            name = func._schema.name.split("::")[-1]
            _counter.torch_ops += 1
            read = list(args[1:] if name in _OVERWRITE_SELF else args) + list(kwargs.values())
            _counter.torch_read += _tensor_bytes(torch.utils._pytree.tree_leaves(read))
            if name not in _NOTHING_WRITTEN:
                _counter.torch_written += _tensor_bytes(torch.utils._pytree.tree_leaves(out))
        return out


@contextlib.contextmanager
def counting():
    global _counter
    _counter = Traffic()
    try:
        with _TorchTraffic():
            yield _counter
    finally:
        _counter = None


def measure(loss_fn, inputs):
    """Traffic of forward + backward of `loss_fn(*inputs)` w.r.t. the inputs that require grad."""
    leaves = [x for x in inputs if torch.is_tensor(x) and x.requires_grad]
    with counting() as traffic:
        loss = loss_fn(*inputs)
        torch.autograd.grad(loss, leaves)
    return traffic


# --- the counter checked on what it must see ----------------------------------------------------

@triton.jit
def _copy_kernel(source_ptr, destination_ptr, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    tl.store(destination_ptr + offsets, tl.load(source_ptr + offsets, mask=mask), mask=mask)


def self_check():
    """The counter on calls whose traffic is known: a masked copy kernel over 1000 fp32 (4 blocks
    of 256, the last one partly masked off) moves 4000 bytes each way in one launch; `x * 2` on
    1000 fp32 is one op reading 4000 bytes and writing 4000."""
    source = torch.randn(1000)
    destination = torch.empty_like(source)
    with counting() as copy:
        _copy_kernel[(4,)](source, destination, source.numel(), BLOCK=256)
    assert torch.equal(source, destination)
    assert (copy.kernel_read, copy.kernel_written, copy.launches, copy.torch_ops) == (4000, 4000, 1, 0), copy
    with counting() as multiply:
        source * 2
    assert (multiply.torch_read, multiply.torch_written, multiply.torch_ops) == (4000, 4000, 1), multiply


# --- the calls ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    build: object        # () -> (loss_fn, inputs, big tensor)
    bound: float         # the family's bound, in big-tensor units
    ceiling: float       # --check fails above this (today's measure; lower it as kernels improve)
    max_launches_and_ops: int


def _generator():
    return torch.Generator().manual_seed(0)


def _cross_entropy(tokens, vocabulary, dtype, ignored=True, **options):
    """Every fourth token ignored (as padding is) unless `ignored` is False: an ignored token's
    bound is one write of its zero gradient, so the bound is 0.75 * 2 + 0.25 = 1.75 logits."""
    def build():
        logits = torch.randn(tokens, vocabulary, generator=_generator()).to(dtype).requires_grad_()
        target = torch.randint(0, vocabulary, (tokens,), generator=_generator())
        if ignored:
            target[1::4] = -100
        return (lambda x, t: F.cross_entropy(x, t, **options)), (logits, target), logits
    return build


def _nll(tokens, classes, dtype):
    """Log-probabilities with every fourth token ignored. The bound is one write of the
    gradient (a token's one read, its log-probability at the target, is 1/C of its row)."""
    def build():
        log_probs = torch.randn(tokens, classes, generator=_generator()).log_softmax(1)
        log_probs = log_probs.to(dtype).requires_grad_()
        target = torch.randint(0, classes, (tokens,), generator=_generator())
        target[1::4] = -100
        return F.nll_loss, (log_probs, target), log_probs
    return build


def _pointwise(fn, numel, dtype, probabilities=False):
    def build():
        x = torch.randn(numel, generator=_generator()).to(dtype)
        if probabilities:
            x = torch.sigmoid(x)
        y = torch.rand(numel, generator=_generator()).to(dtype)
        x.requires_grad_()
        return fn, (x, y), x
    return build


def _dice(samples, rows, classes, dtype):
    def build():
        x = torch.rand(samples, rows, classes, generator=_generator()).to(dtype).requires_grad_()
        label = torch.randint(0, classes, (samples, rows, 1), generator=_generator())
        return F.dice_loss, (x, label), x
    return build


def _queued(build):
    """A case's build with its loss run with every value check on CUDA's path
    (_args.checks_queued_as_on_cuda): a CUDA call cannot read a verdict on the host without a
    sync, so it queues its checks on the device; this counts that path on the CPU."""
    def queued_build():
        fn, inputs, big = build()

        def queued(*args):
            with _args.checks_queued_as_on_cuda():
                return fn(*args)
        return queued, inputs, big
    return queued_build


# cross entropy fwd+bwd in 8 launches + torch ops: the CPU's target check (bucketize and
# bincount: ignore_index -100 lies apart from the classes), the gradient, the reduction's partials
# and the loss allocations, the row kernel (mean divisor and reduction inside), autograd's
# grad_output and the backward's kernel (which returns at once for grad_output 1)
CASES = [
    Case("cross_entropy V=4096 fp32 (one block)", _cross_entropy(16, 4096, torch.float32), 1.75, 1.77, 8),
    Case("cross_entropy V=4096 fp32 (one block, none ignored)",
         _cross_entropy(16, 4096, torch.float32, ignored=False), 2.0, 2.02, 8),
    # a row of up to 32768 classes with hard labels and none of the options that keep more
    # values live is held whole in one block (cross_entropy._held_row_block): read once
    Case("cross_entropy V=32768 fp32", _cross_entropy(8, 32768, torch.float32), 1.75, 1.76, 8),
    Case("cross_entropy V=32768 bf16", _cross_entropy(8, 32768, torch.bfloat16), 1.75, 1.76, 8),
    # longer rows (Llama 3's 128256 classes) loop over blocks: pass 2 reads each row again but
    # for its last block, kept in registers from pass 1 (here 1 of 8 blocks)
    Case("cross_entropy V=65536 bf16", _cross_entropy(8, 65536, torch.bfloat16), 1.75, 2.42, 8),
    # GPT-2's vocabulary: rows no multiple of 16 bytes, split at 16-byte boundaries; pass 2
    # reads the row again but for its last block (1 of 7) and reads its head and tail (under 8
    # classes each) again
    Case("cross_entropy V=50257 bf16 (rows split)", _cross_entropy(8, 50257, torch.bfloat16),
         1.75, 2.39, 8),
    # label smoothing keeps the row sums beside the row: looped, read twice but for 1 of 4 blocks
    Case("cross_entropy V=32768 bf16 smoothing", _cross_entropy(8, 32768, torch.bfloat16, label_smoothing=0.1),
         1.75, 2.32, 8),
    # on CUDA the row kernel records the target check as it reads the targets, and the reduced
    # launch writes its verdict over the spent counter of its partials: one queued assert where
    # the CPU's check is 2 ops, so 7 in all
    Case("cross_entropy V=32768 bf16 (checks queued as on CUDA)",
         _queued(_cross_entropy(8, 32768, torch.bfloat16)), 1.75, 1.76, 7),
    # NLL: the forward gathers each token's log-probability and weight; the backward's one
    # kernel writes the whole gradient (the target's value, zeros elsewhere)
    Case("nll_loss V=4096 fp32", _nll(64, 4096, torch.float32), 1.0, 1.01, 10),
    Case("nll_loss V=4096 bf16", _nll(64, 4096, torch.bfloat16), 1.0, 1.01, 10),
    # the elementwise losses reduce in their launch (the last program sums the partials): the
    # partials' allocation, the kernel, autograd's grad_output and the backward's kernel
    Case("binary_cross_entropy_with_logits fp32", _pointwise(F.binary_cross_entropy_with_logits, 1 << 16, torch.float32),
         3.0, 3.0, 6),
    Case("mse_loss fp32", _pointwise(F.mse_loss, 1 << 16, torch.float32), 3.0, 3.0, 6),
    Case("smooth_l1_loss bf16", _pointwise(F.smooth_l1_loss, 1 << 16, torch.bfloat16), 3.0, 3.0, 6),
    # the CPU's probability check is one aminmax pass over the input before the kernel; on CUDA
    # the kernel records it as it reads the input, one int8 flag per program (16 bytes here), and
    # the assert is queued on them: three ops (the flags' allocation, their `all`, the assert)
    # where the CPU has its one aminmax
    Case("binary_cross_entropy fp32 (probabilities)",
         _pointwise(F.binary_cross_entropy, 1 << 16, torch.float32, probabilities=True), 3.0, 4.0, 7),
    Case("binary_cross_entropy fp32 (probabilities, checks queued as on CUDA)",
         _queued(_pointwise(F.binary_cross_entropy, 1 << 16, torch.float32, probabilities=True)),
         3.0, 3.0, 9),
    # dice: the forward reads the probabilities once, the backward writes their gradient once
    # from each sample's two sums (the int64 labels, read by both, are index traffic: 0.5 of the
    # input here, 8 bytes a row against 4 fp32 classes; the CPU's check reads them once more);
    # three launches and no torch ops between them, and on CUDA the sums launch records the
    # label check (a verdict, an assert)
    Case("dice_loss N=8 R=4096 C=4 fp32", _dice(8, 4096, 4, torch.float32), 2.0, 3.5, 10),
    Case("dice_loss N=8 R=4096 C=4 fp32 (checks queued as on CUDA)",
         _queued(_dice(8, 4096, 4, torch.float32)), 2.0, 3.0, 11),
]


# --- sequence and sampled losses: the big tensor is the one whose gradient is the output -------

def _ctc(frames, batch, classes, label_length, dtype):
    def build():
        log_probs = torch.randn(frames, batch, classes, generator=_generator()).log_softmax(-1)
        log_probs = log_probs.to(dtype).requires_grad_()
        targets = torch.randint(1, classes, (batch, label_length), generator=_generator())
        lengths = torch.full((batch,), frames), torch.full((batch,), label_length)
        return (lambda x, t: F.ctc_loss(x, t, *lengths)), (log_probs, targets), log_probs
    return build


def _crf(batch, steps, num_tags, dtype):
    def build():
        emissions = torch.randn(batch, steps, num_tags, generator=_generator()).to(dtype).requires_grad_()
        transitions, start, end = (torch.randn(*shape, generator=_generator()).to(dtype)
                                   for shape in ((num_tags, num_tags), (num_tags,), (num_tags,)))
        tags = torch.randint(0, num_tags, (batch, steps), generator=_generator())
        mask = torch.arange(steps) < torch.randint(1, steps + 1, (batch, 1), generator=_generator())
        return ((lambda e, t: F.crf_nll(e, t, transitions, start, end, mask)), (emissions, tags),
                emissions)
    return build


def _hsigmoid(samples, features, classes, dtype):
    def build():
        x = torch.randn(samples, features, generator=_generator()).to(dtype).requires_grad_()
        weight = torch.randn(classes - 1, features, generator=_generator()).to(dtype).requires_grad_()
        label = torch.randint(0, classes, (samples,), generator=_generator())
        return ((lambda x, w: F.hsigmoid_loss(x, label, classes, w)), (x, weight), x)
    return build


def _nce(samples, features, classes, num_noise, dtype):
    def build():
        x = torch.randn(samples, features, generator=_generator()).to(dtype).requires_grad_()
        weight = torch.randn(classes, features, generator=_generator()).to(dtype).requires_grad_()
        target = torch.randint(0, classes, (samples,), generator=_generator())
        noise = torch.randint(0, classes, (samples, num_noise), generator=_generator())
        log_q = torch.full((classes,), -math.log(classes), dtype=dtype)
        return ((lambda x, w: F.nce_loss(x, target, w, None, noise, log_q)), (x, weight), x)
    return build


def _gathered_bound(samples, classes_or_nodes, rows_per_sample):
    """hsigmoid's and NCE's bound in units of x (N, D), M = rows per sample, R rows of W, with no
    cache (as the counter counts): read x once; gather the M rows of W a sample scores (z and
    d x both from that one read); write d x; the weight gradient dW[r] = sum dz_e x[sample(e)]
    gathers x once per entry (M); write dW (R / N). 2 + 2M + R / N; index bytes left out."""
    return 2 + 2 * rows_per_sample + classes_or_nodes / samples


SEQUENCE_CASES = [
    # CTC and CRF: read the scores, write their gradient. Today's kernels keep their recursions'
    # per-step state in fp32 work buffers written and read back (CTC: the alpha and beta
    # histories, read by its parallel gradient kernel), which at these sizes outweighs the
    # scores themselves. CTC writes each gradient element once, the dense sweep skipping the
    # states' classes by a (N, C + 1) byte map (the states kernel scatters it; each gradient
    # program reads its row once): at C = 512 with 12 labels that read costs a little more than
    # the few label classes it saves, counted here with no cache (on a GPU the map is an L2 hit).
    # The states kernel also writes the extended labels, and on CUDA records the label check:
    # one verdict and one queued assert where the CPU's check is a few torch ops
    Case("ctc_loss T=64 N=4 C=32 S=12 fp32", _ctc(64, 4, 32, 12, torch.float32), 2.0, 6.40, 21),
    Case("ctc_loss T=64 N=4 C=32 S=12 fp32 (checks queued as on CUDA)",
         _queued(_ctc(64, 4, 32, 12, torch.float32)), 2.0, 6.35, 18),
    Case("ctc_loss T=64 N=4 C=32 S=12 bf16", _ctc(64, 4, 32, 12, torch.bfloat16), 2.0, 10.21, 22),
    Case("ctc_loss T=32 N=4 C=512 S=12 fp32", _ctc(32, 4, 512, 12, torch.float32), 2.0, 1.37, 21),
    # the CRF's alpha and beta sweeps run at once, so both store their (B, T, K) fp32 states for
    # the parallel marginals kernel to read: two emission reads, two state writes and reads, the
    # gradient written once in the emissions' dtype. A first small launch reads the mask and the
    # tags (L, the last step, the tags wrapped into range where read and the end transition's
    # tag; int64, as the kernels read them: int32 tags spilled the K = 300 transition kernel)
    # and, on CUDA, records both value checks: two verdicts, two queued asserts, where the
    # CPU's checks are torch ops
    Case("crf_nll B=4 T=32 K=9 fp32", _crf(4, 32, 9, torch.float32), 2.0, 5.94, 27),
    Case("crf_nll B=4 T=32 K=9 fp32 (checks queued as on CUDA)",
         _queued(_crf(4, 32, 9, torch.float32)), 2.0, 4.92, 18),
    Case("crf_nll B=4 T=32 K=9 bf16", _crf(4, 32, 9, torch.bfloat16), 2.0, 9.31, 28),
    # hsigmoid (default tree: 63 nodes, paths of 6) and NCE (1 + 7 classes a sample) on the
    # weight alone; the weight gradient's scatter runs in the forward (a sort and searchsorted
    # for each row's run of entries, then two launches), the backward's scale kernels return
    # at once for grad_output 1
    Case("hsigmoid_loss N=64 D=64 C=64 fp32", _hsigmoid(64, 64, 64, torch.float32),
         _gathered_bound(64, 63, 6), 17.0, 18),
    # on CUDA the forward launch records the index checks as it reads the indices: a verdict of
    # ones (one op) and an assert on each, where the CPU checks them with torch ops
    Case("hsigmoid_loss N=64 D=64 C=64 fp32 (checks queued as on CUDA)",
         _queued(_hsigmoid(64, 64, 64, torch.float32)), _gathered_bound(64, 63, 6), 17.0, 19),
    Case("nce_loss N=64 D=64 C=64 k=7 fp32", _nce(64, 64, 64, 7, torch.float32),
         _gathered_bound(64, 64, 8), 22.7, 19),
    Case("nce_loss N=64 D=64 C=64 k=7 fp32 (checks queued as on CUDA)",
         _queued(_nce(64, 64, 64, 7, torch.float32)), _gathered_bound(64, 64, 8), 22.4, 20),
]
CASES += SEQUENCE_CASES


def run_cases():
    rows = []
    for case in CASES:
        loss_fn, inputs, big = case.build()
        traffic = measure(loss_fn, inputs)
        big_bytes = big.numel() * big.element_size()
        rows.append((case, traffic, traffic.total / big_bytes))
    return rows


def table(rows, markdown):
    header = ("call", "kernel r/w", "torch r/w", "total / big tensor", "bound", "launches", "torch ops")
    lines = []
    for case, t, ratio in rows:
        lines.append((case.name, f"{t.kernel_read / 2**20:.2f}/{t.kernel_written / 2**20:.2f} MiB",
                      f"{t.torch_read / 2**20:.2f}/{t.torch_written / 2**20:.2f} MiB", f"{ratio:.2f}",
                      f"{case.bound:.2f}", str(t.launches), str(t.torch_ops)))
    if markdown:
        out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *lines])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 where a call exceeds its ceiling")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    _install_kernel_counters()
    self_check()
    rows = run_cases()
    print(table(rows, args.markdown))
    lce_peaks = lce_memory.issue_size_peaks()  # memory, not traffic: LCE's bound is its FLOPs
    for reduction, peak in lce_peaks.items():
        print(f"linear_cross_entropy N=8192 H=2304 V=256000 bf16 '{reduction}': peak {peak:.1f} MiB "
              f"beyond inputs and gradients (ceiling {lce_memory.BUDGET // 2**20}; lce_memory.py)")
    if args.check:
        over = [(case, t, ratio) for case, t, ratio in rows
                if ratio > case.ceiling + 0.01 or t.launches + t.torch_ops > case.max_launches_and_ops]
        for case, t, ratio in over:
            print(f"FAIL {case.name}: {ratio:.2f} x the big tensor (ceiling {case.ceiling}), "
                  f"{t.launches + t.torch_ops} launches + torch ops (ceiling {case.max_launches_and_ops})")
        over_memory = [r for r, peak in lce_peaks.items() if peak * 2**20 > lce_memory.BUDGET]
        for reduction in over_memory:
            print(f"FAIL linear_cross_entropy '{reduction}': peak above {lce_memory.BUDGET // 2**20} MiB")
        sys.exit(1 if over or over_memory else 0)


if __name__ == "__main__":
    main()
