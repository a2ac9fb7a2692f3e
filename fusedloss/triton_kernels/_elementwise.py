"""The generic elementwise loss kernel the binary, pointwise and ranking families run: one pass.

Each program takes ELEMENTWISE_BLOCK elements, loads up to three operands and an optional
weight, evaluates the loss and its derivatives together, and writes either the per-element loss
or one partial sum per program, plus the gradient of every operand that requires grad. The
per-loss math is a @triton.jit function of the family module (binary.py, pointwise.py,
ranking.py) passed as the constexpr LOSS, so each compiled kernel contains only its own loss:

    loss_math(a, b, c, p0, p1) -> (loss, dloss/da, dloss/db, dloss/dc)

for one element, with `a, b, c` the operands (already loaded and cast to the accumulation dtype,
in the order of the loss's Python signature; c is 1 when absent) and `p0, p1` its two scalar
parameters, before any weight or reduction scaling. Derivatives of operands a loss does not have
are returned as 0 and never stored. 'mean' and 'sum' are reduced in the
launch: each program sums its block, and the program that finishes last sums those partials in
program order (_common.ordered_program_sums: the same input gives the same bits), divides for
'mean' (by the element count, or by the weight sum of a weighted mean, summed alike) and writes
the loss. The backward only multiplies the saved gradients by grad_output (scalar or
elementwise; _precomputed_gradient.py).

Range check (A_IN_UNIT, compiled into BCE on probabilities alone, where the check is queued on
the device): each program also writes one int8 flag, whether every `a` it loaded lies in
[0, 1] (NaN does not), and the launcher queues one device assert on all the flags: the check
reads what the loss reads anyway, and its only traffic is a byte per program.

Broadcasting: an operand whose broadcast only repeats a contiguous block along leading
dimensions (pos_weight (C,) against (N, C)) is read in place with `offset % period`; other
non-contiguous operands are copied once. The gradient of a broadcast operand is kept in the
accumulation dtype and summed back to the operand's shape in the backward before the one cast
to its dtype (summing after a per-element fp16 rounding loses too much to cancellation).
"""
import functools

import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import (ELEMENTWISE_BLOCK, accumulation_dtype, broadcast_shape, fp32_pair,
                      mean_or_nan, ordered_program_sums, round_to, row_warps,
                      triton_accumulation)
from .._autocast import loss_dtype
from ._precomputed_gradient import Sweep, precomputed_gradient, wanted_gradients


# Partials the last program adds per step of its reduction: few, for registers (with the
# launch's block, fp64 sigmoid focal loss spilled 28 bytes a thread for sm_90; 16 at this width)
PARTIALS_BLOCK = tl.constexpr(256)


@triton.jit
def _load(ptr, offsets, mask, period, REPEATS: tl.constexpr, ACC: tl.constexpr,
          MASKED: tl.constexpr):
    if REPEATS:  # a broadcast operand: its contiguous block repeats every `period` elements
        offsets = offsets % period
    # cast right after the load: the interpreter would compute on raw bf16 bits
    if MASKED:
        value = tl.load(ptr + offsets, mask=mask, other=0)
    else:
        value = tl.load(ptr + offsets)
    return value.to(ACC)


@triton.jit
def _store(ptr, offsets, value, mask, MASKED: tl.constexpr):
    value = round_to(value, ptr.dtype.element_ty)
    if MASKED:
        tl.store(ptr + offsets, value, mask=mask)
    else:
        tl.store(ptr + offsets, value)


@triton.jit
def _elementwise_block(
    a_ptr, b_ptr, c_ptr, w_ptr, c_period, w_period, loss_ptr, a_in_unit_ptr,
    ga_ptr, gb_ptr, gc_ptr, gw_ptr, n, p0_hi, p0_lo, p1_hi, p1_lo, pid, offsets, mask,
    LOSS: tl.constexpr, HAS_C: tl.constexpr, HAS_W: tl.constexpr,
    C_REPEATS: tl.constexpr, W_REPEATS: tl.constexpr,
    REDUCE: tl.constexpr, MEAN: tl.constexpr, WEIGHT_SUM: tl.constexpr, A_IN_UNIT: tl.constexpr,
    GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, GRAD_C: tl.constexpr, GRAD_W: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr,
):
    """One program's block; MASKED only for the last, partial one (the kernel says why).
    Returns the block's sums of the loss and (WEIGHT_SUM) of the weight, with REDUCE."""
    a = _load(a_ptr, offsets, mask, n, False, ACC, MASKED)
    b = _load(b_ptr, offsets, mask, n, False, ACC, MASKED)
    if HAS_C:
        c = _load(c_ptr, offsets, mask, c_period, C_REPEATS, ACC, MASKED)
    else:  # only pos_weight is optional, and its neutral value is 1
        c = tl.full([BLOCK], 1.0, ACC)
    if A_IN_UNIT:  # masked-off lanes loaded 0, which passes; NaN fails both comparisons
        tl.store(a_in_unit_ptr + pid, tl.min(((a >= 0) & (a <= 1)).to(tl.int8), axis=0))
    p0 = tl.full([BLOCK], p0_hi, ACC) + p0_lo
    p1 = tl.full([BLOCK], p1_hi, ACC) + p1_lo
    loss, da, db, dc = LOSS(a, b, c, p0, p1)

    # 'mean' over the element count folds 1/n into the gradient here; a weighted mean's
    # denominator (the weight sum) is only known after the sweep and is applied in backward
    scale = tl.full([BLOCK], 1.0, ACC)
    if MEAN:
        scale = scale / n
    if GRAD_W:
        _store(gw_ptr, offsets, loss * scale, mask, MASKED)
    if HAS_W:
        w = _load(w_ptr, offsets, mask, w_period, W_REPEATS, ACC, MASKED)
        loss = loss * w
        scale = scale * w
    if GRAD_A:
        _store(ga_ptr, offsets, da * scale, mask, MASKED)
    if GRAD_B:
        _store(gb_ptr, offsets, db * scale, mask, MASKED)
    if GRAD_C:
        _store(gc_ptr, offsets, dc * scale, mask, MASKED)

    loss_sum = tl.full([], 0.0, ACC)
    weight_sum = tl.full([], 0.0, ACC)
    if REDUCE:
        loss_sum = tl.sum(tl.where(mask, loss, 0.0), axis=0)
        if WEIGHT_SUM:
            weight_sum = tl.sum(tl.where(mask, w, 0.0), axis=0)
    else:
        _store(loss_ptr, offsets, loss, mask, MASKED)
    return loss_sum, weight_sum


@triton.jit
def _elementwise_loss_kernel(
    a_ptr, b_ptr, c_ptr, w_ptr,      # operands in the loss's signature order; c, w optional
    c_period, w_period,              # c and w repeat every `period` elements when *_REPEATS
    loss_ptr,                        # per-element loss, or the 0-d reduced loss (REDUCE)
    partials_ptr,                    # REDUCE: zeroed (1 + programs,), (1 + 2 programs,) with
                                     # WEIGHT_SUM: ordered_program_sums'
    totals_ptr,                      # WEIGHT_SUM: (2,) the weighted mean and the weight sum, in
                                     # the accumulation dtype (the backward's)
    a_in_unit_ptr,                   # one int8 per program: every a it read is in [0, 1] (A_IN_UNIT)
    ga_ptr, gb_ptr, gc_ptr, gw_ptr,  # gradients; gw holds the unweighted loss
    n,                               # element count
    p0_hi, p0_lo, p1_hi, p1_lo,      # the loss's two scalar parameters, each an fp32 pair hi + lo
                                     # (a Python float arrives as fp32: fp64 losses need the rest)
    LOSS: tl.constexpr,              # the loss's jit math (module header)
    HAS_C: tl.constexpr, HAS_W: tl.constexpr,
    C_REPEATS: tl.constexpr, W_REPEATS: tl.constexpr,
    REDUCE: tl.constexpr, MEAN: tl.constexpr, WEIGHT_SUM: tl.constexpr, A_IN_UNIT: tl.constexpr,
    GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, GRAD_C: tl.constexpr, GRAD_W: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    # a whole block goes unmasked: a mask against an n not known to be a multiple of 16 would
    # make every access of the launch scalar; only the last, partial block is masked. The block
    # is compiled twice (MASKED a constexpr of the static loop) and each program runs one.
    loss_sum = tl.full([], 0.0, ACC)
    weight_sum = tl.full([], 0.0, ACC)
    for masked in tl.static_range(2):
        if (masked == 1) == ((pid + 1) * BLOCK > n):
            block_loss, block_weight = _elementwise_block(
                a_ptr, b_ptr, c_ptr, w_ptr, c_period, w_period, loss_ptr, a_in_unit_ptr,
                ga_ptr, gb_ptr, gc_ptr, gw_ptr, n, p0_hi, p0_lo, p1_hi, p1_lo, pid, offsets,
                mask, LOSS, HAS_C, HAS_W, C_REPEATS, W_REPEATS, REDUCE, MEAN, WEIGHT_SUM,
                A_IN_UNIT, GRAD_A, GRAD_B, GRAD_C, GRAD_W, ACC, BLOCK, masked == 1)
            loss_sum += block_loss
            weight_sum += block_weight
    if REDUCE:
        last, total, weight_total = ordered_program_sums(
            partials_ptr, pid, tl.num_programs(0), loss_sum, weight_sum, WEIGHT_SUM,
            PARTIALS_BLOCK)
        if last:
            if MEAN:
                total = total / n
            if WEIGHT_SUM:
                total = mean_or_nan(total, weight_total)
                tl.store(totals_ptr, total)
                tl.store(totals_ptr + 1, weight_total)
            tl.store(loss_ptr, round_to(total, loss_ptr.dtype.element_ty))


def _repeating(t):
    """(flat tensor, period) such that element i of `t` is flat[i % period], without a copy when
    `t` only broadcasts a contiguous block along leading dimensions."""
    lead = 0
    while lead < t.dim() and (t.stride(lead) == 0 or t.shape[lead] == 1):
        lead += 1
    if t.numel() > 0:
        block = t[(0,) * lead]
        if block.is_contiguous():
            return block.reshape(-1), max(block.numel(), 1)
    return t.contiguous().reshape(-1), max(t.numel(), 1)


def _sweep(loss_math, reduction, p0, p1, weighted_mean, unit_interval_error, needs, a, b, c, w):
    """Loss and gradients in one launch (module header), as a `Sweep` for the backward."""
    operands = (a, b, c, w)
    present = [t for t in operands if t is not None]
    shape = broadcast_shape(*(t.shape for t in present))
    n = shape.numel()
    out_dtype = loss_dtype(functools.reduce(torch.promote_types, [t.dtype for t in present]),
                           a.device)
    acc = accumulation_dtype(out_dtype)

    a_flat, b_flat = (t.expand(shape).contiguous().reshape(-1) for t in (a, b))
    c_flat, c_period = _repeating(c.expand(shape)) if c is not None else (a_flat, n)
    w_flat, w_period = _repeating(w.expand(shape)) if w is not None else (a_flat, n)
    # fp64 takes half a block on the same threads: its operands need twice the registers
    block = ELEMENTWISE_BLOCK // 2 if acc == torch.float64 else ELEMENTWISE_BLOCK
    grid = (triton.cdiv(n, block),)
    in_kernel = reduction != "none" and n > 0  # reduced in the launch (module header)
    loss = torch.empty(() if in_kernel else n, device=a.device,
                       dtype=out_dtype if in_kernel or reduction == "none" else acc)
    partials = (torch.zeros(1 + (2 if weighted_mean else 1) * grid[0], device=a.device, dtype=acc)
                if in_kernel else loss)
    totals = torch.empty(2, device=a.device, dtype=acc) if weighted_mean and in_kernel else loss
    checked = unit_interval_error is not None and n > 0
    a_in_unit = torch.empty(grid[0], device=a.device, dtype=torch.int8) if checked else loss
    # keep in the accumulation dtype what backward sums (a broadcast operand's gradient) or
    # cancels (the weighted mean's weight gradient l_i - mean)
    in_acc = [t is not None and t.shape != shape for t in operands]
    in_acc[3] = in_acc[3] or weighted_mean
    grads = [torch.empty(n, device=a.device, dtype=acc if keep else t.dtype) if need else None
             for t, need, keep in zip(operands, needs, in_acc)]
    if n > 0:
        _elementwise_loss_kernel[grid](
            a_flat, b_flat, c_flat, w_flat, c_period, w_period, loss, partials, totals, a_in_unit,
            *[loss if g is None else g for g in grads], n, *fp32_pair(p0), *fp32_pair(p1),
            LOSS=loss_math, HAS_C=c is not None, HAS_W=w is not None,
            C_REPEATS=c_period != n, W_REPEATS=w_period != n,
            REDUCE=in_kernel, MEAN=reduction == "mean" and not weighted_mean,
            WEIGHT_SUM=weighted_mean, A_IN_UNIT=checked,
            GRAD_A=needs[0], GRAD_B=needs[1], GRAD_C=needs[2], GRAD_W=needs[3],
            ACC=triton_accumulation(acc), BLOCK=block, num_warps=row_warps(ELEMENTWISE_BLOCK))
    if checked:  # queued: no host sync (the CPU raises at once)
        torch._assert_async(a_in_unit.all(), unit_interval_error)

    if in_kernel:
        result = loss
        mean, weight_sum = totals if weighted_mean else (loss, None)
    else:  # 'none', or a reduction over no element: torch's empty sum and mean
        weight_sum = torch.zeros((), device=a.device, dtype=acc) if weighted_mean else None
        result = mean = reduce(loss.view(shape), reduction, weight_sum if weighted_mean else n)
    grads = [None if g is None else g.view(shape) for g in grads]
    if weighted_mean and grads[3] is not None:  # d/dw_i of sum(w l) / sum(w): (l_i - mean) / sum(w)
        grads[3] = grads[3] - mean

    def over_weight_sum(grad_output):  # the weighted mean's denominator, known after the sweep
        return grad_output.to(weight_sum.dtype) / weight_sum

    def finish(i, grad):  # a broadcast operand's gradient summed back, then one cast
        return grad.sum_to_size(operands[i].shape).to(operands[i].dtype)
    return Sweep((result.to(out_dtype),), grads,
                 over_weight_sum if weighted_mean else Sweep.shape_grad_output, finish)


def elementwise_loss(loss_math, operands, weight=None, reduction="mean", p0=0.0, p1=0.0,
                     weighted_mean=False, unit_interval_error=None):
    """Run the jit function `loss_math` through the kernel. operands: 2 or 3 tensors in the
    loss's signature order (broadcast together with the weight); `weighted_mean`: 'mean' divides
    by the weight sum (l1 and mse) instead of the element count; `unit_interval_error`: a
    message, where the first operand's range check is the call's (module header's A_IN_UNIT),
    the queued assert's."""
    a, b, c = (list(operands) + [None])[:3]
    sweep = functools.partial(_sweep, loss_math, reduction, float(p0), float(p1),
                              weighted_mean and reduction == "mean" and weight is not None,
                              unit_interval_error,
                              wanted_gradients(a, b, c, weight))
    return precomputed_gradient(sweep, a, b, c, weight)
