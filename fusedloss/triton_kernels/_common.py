"""What every kernel family decides alike: launch sizes, accumulation dtypes, 16-bit stores.

One place for these so a tuning change reaches every op (no per-file copies of heuristics).
"""
import math
import os

import numpy
import torch
import triton
import triton.language as tl

from .._backend import interpreting

# Whether launch sizes (blocks, chunk rows) are the GPU's. Under the interpreter they are small so
# that tests at small shapes still run every block loop; FUSEDLOSS_LAUNCH_PARAMS=gpu, set before
# this module is imported, gives the interpreter the GPU's sizes instead, for tools that run the
# real host code to see what a GPU would launch (benchmarks/compile_sm90.py). Kernel math is the
# same either way.
GPU_LAUNCH_PARAMS = not interpreting() or os.environ.get("FUSEDLOSS_LAUNCH_PARAMS") == "gpu"

# Largest vocabulary block one program sweeps at a time. Rows longer than this loop over blocks
# with an online log-sum-exp; shorter rows take one block of the next power of two. 8192 with 32
# warps compiles for sm_90 (benchmarks/compile_sm90.py) without register spills in every fp32,
# fp16 and bf16 variant of the cross-entropy row kernel (fp64 rows loop over half of it:
# cross_entropy._looped_row_block); 32768 spilled up to 1.6 KB per thread with every option on.
MAX_ROW_BLOCK = 8192 if GPU_LAUNCH_PARAMS else 1024
# Longest row the cross-entropy kernel holds whole in one block, read once rather than twice,
# where little else is live beside it (cross_entropy._held_row_block: hard labels, no
# smoothing, z-loss, soft-capping, focal term or returned lse, rows already 16-byte aligned, not
# fp64). Measured with the sm_90 compile on both CI stacks at V = 16384 and 32000: 32 warps on
# 16384 classes and 16 warps on 32768 (64 elements a thread, up to 128 registers) spill nothing
# in fp32, fp16 or bf16, with or without class weights, reduced or per token, with or without
# the gradient; 32 warps on 32768 spilled 16-bit rows on triton 3.9 (24 bytes), fp64 spilled
# 0.6-2 KB, 16-bit rows split at 16-byte boundaries (BERT's 30522 classes) 24-72 bytes, and
# each excluded option spilled (label smoothing 20-136 bytes, soft-capping 120-400, lse or
# z-loss in 16 bits 16-80). The interpreter holds no row beyond its block, so that its tests
# at small shapes still run the loops; its held-row tests raise this limit.
MAX_HELD_ROW = 32768 if GPU_LAUNCH_PARAMS else MAX_ROW_BLOCK
# Elements per program for flat elementwise kernels.
ELEMENTWISE_BLOCK = 4096 if GPU_LAUNCH_PARAMS else 1024
# A persistent row kernel's grid when no GPU says otherwise: sm_90's (H100/H200: 132 SMs, 50 MiB
# of L2 on the H100, the smaller). The interpreter's tests use 3 programs, so that every program
# sweeps several rows and the cross-program reduction has several partials to combine.
_SM90_MULTIPROCESSORS = 132
_SM90_L2_BYTES = 50 * 2**20
_INTERPRETER_PROGRAMS = 3


def persistent_programs(device, num_rows, row_bytes):
    """Programs for a persistent row kernel (each program sweeps rows pid, pid + P, ...).

    Two programs per SM, which hide each other's latency where both are resident. Registers
    decide that: a program of 32 warps at 64 registers (the 8192-wide row block) or of 16 at
    128 (a held row, MAX_HELD_ROW) fills an sm_90 SM's 64K registers, so there the second
    program of an SM runs after the first, at no cost (the persistent loop gives every program
    the same number of rows). A looped row is read twice (pass 1, then pass 2 for the
    gradient), and the second read comes from L2 only if the rows in flight fit in it, so for
    long rows the grid shrinks to half the L2's worth of rows, but never below one program per
    SM (a thinner grid cannot pull the HBM bandwidth).
    """
    if not GPU_LAUNCH_PARAMS:
        return max(1, min(num_rows, _INTERPRETER_PROGRAMS))
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        multiprocessors, l2_bytes = properties.multi_processor_count, properties.L2_cache_size
    else:
        multiprocessors, l2_bytes = _SM90_MULTIPROCESSORS, _SM90_L2_BYTES
    fitting = l2_bytes // (2 * max(row_bytes, 1))
    return max(1, min(num_rows, max(multiprocessors, min(2 * multiprocessors, fitting))))


def row_block(num_columns):
    """Block width for a row-wise kernel over `num_columns` columns."""
    return min(MAX_ROW_BLOCK, triton.next_power_of_2(max(num_columns, 1)))


def row_warps(block):
    """Warps for a row-wise kernel: enough threads to keep ~8-16 elements per thread."""
    return max(1, min(32, block // 1024 * 4)) if block >= 1024 else 4


def held_row_warps(block):
    """Warps for a row held whole (MAX_HELD_ROW): row_warps' up to 16384 columns, 16 beyond (64
    elements a thread, whose register budget of 128 holds a 16-bit row of 32768 without spills)."""
    return 16 if block > 16384 else row_warps(block)


def broadcast_shape(*shapes):
    """torch.broadcast_shapes(*shapes), in a few microseconds: torch's is a Python reference
    that takes about 20 on every call, and launchers call it on every forward and backward.
    Raises RuntimeError, as torch's does, where the shapes do not broadcast."""
    ndim = max(map(len, shapes), default=0)
    sizes = [1] * ndim
    for shape in shapes:
        for axis, size in enumerate(shape, ndim - len(shape)):
            if size != 1:
                if sizes[axis] not in (1, size):
                    raise RuntimeError(f"shapes {', '.join(str(list(s)) for s in shapes)} cannot "
                                       "be broadcast to a single shape")
                sizes[axis] = size
    return torch.Size(sizes)


def fp32_pair(value):
    """A Python float as hi + lo, both fp32 (hi the nearest fp32): ~48 bits of the double.

    Triton passes Python floats to kernels as fp32, which an fp64 loss cannot afford; a kernel
    takes both and adds them in its accumulation dtype (for fp32, lo vanishes).
    """
    hi = float(numpy.float32(value))
    return hi, float(numpy.float32(value - hi)) if math.isfinite(hi) else 0.0


def accumulation_dtype(dtype):
    """fp32 accumulation for 16- and 32-bit inputs, fp64 for fp64 (docs/design.md, Kernel principles)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_accumulation(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def step_row(buffer, step, width, EVERY_STEP: tl.constexpr):
    """Where a recursion keeps its state at `step`: row `step` of a buffer of every step, else
    one of two alternating rows. Selected by a bit, not `step % rows`: an integer remainder is a
    subroutine call in every step of the serial chain (and triton 3.6 spilled registers around
    it)."""
    if EVERY_STEP:
        return buffer + step * width
    return buffer + (step & 1) * width


@triton.jit
def ordered_program_sums(partials_ptr, pid, programs, first, second, PAIR: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Deterministic sums over a launch's programs of one value each (`first`), or of two
    (`second` too, with PAIR), in one pass and no second launch. `partials_ptr`: a zeroed buffer
    of the accumulation dtype: a counter, `programs` slots for `first`, then (PAIR) `programs`
    for `second`. Each program stores its values, then counts itself (atomic adds of 1.0 count
    exactly in any order, up to 2**24 programs in fp32: 2**36 elements of the elementwise
    losses); the last to finish, told so by the count, sums the slots in program
    order, whatever the order the programs ran in. Returns (whether this program finished last,
    the first sum, the second), the sums meaningful in that program alone."""
    tl.store(partials_ptr + 1 + pid, first)
    if PAIR:
        tl.store(partials_ptr + 1 + programs + pid, second)
    tl.debug_barrier()  # every thread's stores precede the (releasing) count
    finished = tl.atomic_add(partials_ptr, 1.0, sem="acq_rel")
    last = finished == programs - 1
    first_total = tl.zeros((BLOCK,), first.dtype)
    second_total = tl.zeros((BLOCK,), first.dtype)
    if last:
        for start in range(0, programs, BLOCK):
            index = start + tl.arange(0, BLOCK)
            first_total += tl.load(partials_ptr + 1 + index, mask=index < programs, other=0.0,
                                   cache_modifier=".cg")
            if PAIR:
                second_total += tl.load(partials_ptr + 1 + programs + index,
                                        mask=index < programs, other=0.0, cache_modifier=".cg")
    return last, tl.sum(first_total, axis=0), tl.sum(second_total, axis=0)


@triton.jit
def mean_or_nan(total, divisor):
    """total / divisor, NaN where the divisor is 0: a mean over nothing (every token ignored, a
    weight sum of 0) is NaN, as torch's."""
    return tl.where(divisor != 0, total / divisor, float("nan"))


# The interpreter's fp32 -> bf16 cast truncates where the GPU's rounds to nearest even
_ROUND_BF16_BY_HAND = tl.constexpr(interpreting())


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """x cast to DTYPE, rounding to nearest even on the GPU and in the interpreter alike: use it
    for every store of a computed value into a 16-bit output."""
    if _ROUND_BF16_BY_HAND:  # (nested ifs: older Triton rejects chained `and`)
        if (DTYPE == tl.bfloat16) and (x.dtype == tl.float32):
            # add half a bf16 ulp (ties to even), clear the low half: the truncating cast is exact
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = tl.where(x == x, bits.to(tl.float32, bitcast=True), x)  # NaN payloads left alone
    return x.to(DTYPE)
