"""Elementwise losses (binary, regression, ranking): one generic kernel, one pass.

Each program takes ELEMENTWISE_BLOCK elements, loads up to three operands and an optional
weight, evaluates the loss and its derivatives together (the per-loss math lives in
elementwise_losses.py, chosen by a constexpr id), and writes either the per-element loss or one
partial sum per program, plus the gradient of every operand that requires grad. 'mean' and 'sum'
finish with a torch sum of the partials: no atomics, so the same input gives the same bits. The
backward only multiplies the saved gradients by grad_output (scalar or elementwise).

Broadcasting: an operand whose broadcast only repeats a contiguous block along leading
dimensions (pos_weight (C,) against (N, C)) is read in place with `offset % period`; other
non-contiguous operands are copied once. The gradient of a broadcast operand is kept in the
accumulation dtype and summed back to the operand's shape in the backward before the one cast
to its dtype (summing after a per-element fp16 rounding loses too much to cancellation).

dice_loss, whose gradient needs per-sample sums, has its own row-wise kernel in dice.py.
"""
import functools

import torch
import triton
import triton.language as tl

from . import dice
from ._common import (ELEMENTWISE_BLOCK, accumulation_dtype, fp32_pair, round_to, row_warps,
                      triton_accumulation)
from ._scale import scale_saved_gradients
from .elementwise_losses import LOSS_IDS, apply_loss


@triton.jit
def _load(ptr, offsets, mask, period, REPEATS: tl.constexpr, ACC: tl.constexpr):
    if REPEATS:  # a broadcast operand: its contiguous block repeats every `period` elements
        offsets = offsets % period
    # cast right after the load: the interpreter would compute on raw bf16 bits
    return tl.load(ptr + offsets, mask=mask, other=0).to(ACC)


@triton.jit
def _elementwise_loss_kernel(
    a_ptr, b_ptr, c_ptr, w_ptr,      # operands in the loss's signature order; c, w optional
    c_period, w_period,              # c and w repeat every `period` elements when *_REPEATS
    loss_ptr,                        # per-element loss, or one partial sum per program (REDUCE)
    weight_sum_ptr,                  # one partial sum of the weight per program (WEIGHT_SUM)
    ga_ptr, gb_ptr, gc_ptr, gw_ptr,  # gradients; gw holds the unweighted loss
    n,                               # element count
    p0_hi, p0_lo, p1_hi, p1_lo,      # the loss's two scalar parameters, each an fp32 pair hi + lo
                                     # (a Python float arrives as fp32: fp64 losses need the rest)
    LOSS: tl.constexpr, HAS_C: tl.constexpr, HAS_W: tl.constexpr,
    C_REPEATS: tl.constexpr, W_REPEATS: tl.constexpr,
    REDUCE: tl.constexpr, MEAN: tl.constexpr, WEIGHT_SUM: tl.constexpr,
    GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, GRAD_C: tl.constexpr, GRAD_W: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    a = _load(a_ptr, offsets, mask, n, False, ACC)
    b = _load(b_ptr, offsets, mask, n, False, ACC)
    if HAS_C:
        c = _load(c_ptr, offsets, mask, c_period, C_REPEATS, ACC)
    else:  # only pos_weight is optional, and its neutral value is 1
        c = tl.full([BLOCK], 1.0, ACC)
    p0 = tl.full([BLOCK], p0_hi, ACC) + p0_lo
    p1 = tl.full([BLOCK], p1_hi, ACC) + p1_lo
    loss, da, db, dc = apply_loss(LOSS, a, b, c, p0, p1)

    # 'mean' over the element count folds 1/n into the gradient here; a weighted mean's
    # denominator (the weight sum) is only known after the sweep and is applied in backward
    scale = tl.full([BLOCK], 1.0, ACC)
    if MEAN:
        scale = scale / n
    if GRAD_W:
        tl.store(gw_ptr + offsets, round_to(loss * scale, gw_ptr.dtype.element_ty), mask=mask)
    if HAS_W:
        w = _load(w_ptr, offsets, mask, w_period, W_REPEATS, ACC)
        loss = loss * w
        scale = scale * w
    if GRAD_A:
        tl.store(ga_ptr + offsets, round_to(da * scale, ga_ptr.dtype.element_ty), mask=mask)
    if GRAD_B:
        tl.store(gb_ptr + offsets, round_to(db * scale, gb_ptr.dtype.element_ty), mask=mask)
    if GRAD_C:
        tl.store(gc_ptr + offsets, round_to(dc * scale, gc_ptr.dtype.element_ty), mask=mask)

    if REDUCE:
        tl.store(loss_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
        if WEIGHT_SUM:
            tl.store(weight_sum_ptr + pid, tl.sum(tl.where(mask, w, 0.0), axis=0))
    else:
        tl.store(loss_ptr + offsets, round_to(loss, loss_ptr.dtype.element_ty), mask=mask)


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


class _ElementwiseLoss(torch.autograd.Function):
    """Loss and gradients in one forward launch; backward scales the saved gradients."""

    @staticmethod
    def forward(ctx, loss_id, reduction, p0, p1, weighted_mean, grad_enabled, a, b, c, w):
        operands = (a, b, c, w)
        present = [t for t in operands if t is not None]
        shape = torch.broadcast_shapes(*(t.shape for t in present))
        n = shape.numel()
        out_dtype = functools.reduce(torch.promote_types, [t.dtype for t in present])
        acc = accumulation_dtype(out_dtype)
        # needs_input_grad ignores no_grad mode (an evaluation loop): no gradients are due there
        needs = [need and grad_enabled for need in ctx.needs_input_grad[-4:]]
        reduce = reduction != "none"

        a_flat, b_flat = (t.expand(shape).contiguous().reshape(-1) for t in (a, b))
        c_flat, c_period = _repeating(c.expand(shape)) if c is not None else (a_flat, n)
        w_flat, w_period = _repeating(w.expand(shape)) if w is not None else (a_flat, n)
        grid = (triton.cdiv(n, ELEMENTWISE_BLOCK),)
        loss = torch.empty(grid[0] if reduce else n, device=a.device, dtype=acc if reduce else out_dtype)
        weight_sum = torch.empty(grid[0], device=a.device, dtype=acc) if weighted_mean else loss
        # keep in the accumulation dtype what backward sums (a broadcast operand's gradient) or
        # cancels (the weighted mean's weight gradient l_i - mean)
        in_acc = [t is not None and t.shape != shape for t in operands]
        in_acc[3] = in_acc[3] or weighted_mean
        grads = [torch.empty(n, device=a.device, dtype=acc if keep else t.dtype) if need else None
                 for t, need, keep in zip(operands, needs, in_acc)]
        if n > 0:
            _elementwise_loss_kernel[grid](
                a_flat, b_flat, c_flat, w_flat, c_period, w_period, loss, weight_sum,
                *[loss if g is None else g for g in grads], n, *fp32_pair(p0), *fp32_pair(p1),
                LOSS=loss_id, HAS_C=c is not None, HAS_W=w is not None,
                C_REPEATS=c_period != n, W_REPEATS=w_period != n,
                REDUCE=reduce, MEAN=reduction == "mean" and not weighted_mean,
                WEIGHT_SUM=weighted_mean,
                GRAD_A=needs[0], GRAD_B=needs[1], GRAD_C=needs[2], GRAD_W=needs[3],
                ACC=triton_accumulation(acc), BLOCK=ELEMENTWISE_BLOCK,
                num_warps=row_warps(ELEMENTWISE_BLOCK))

        if not reduce:
            result = loss.view(shape)
        else:
            result = loss.sum()
            if weighted_mean:
                weight_sum = weight_sum.sum()
                result = result / weight_sum
            elif reduction == "mean":
                result = result / n
        ctx.shape, ctx.weighted_mean = shape, weighted_mean
        ctx.operands = [(t.shape, t.dtype) if t is not None else None for t in operands]
        ctx.save_for_backward(*[torch.empty(0) if g is None else g for g in grads],
                              weight_sum if weighted_mean else torch.empty(0),
                              result if weighted_mean else torch.empty(0))
        return result.to(out_dtype)

    @staticmethod
    def backward(ctx, grad_output):
        *grads, weight_sum, mean = ctx.saved_tensors
        if ctx.weighted_mean:  # loss = sum(w l) / sum(w)
            grad_output = grad_output.to(weight_sum.dtype) / weight_sum
        wanted = []
        for i, (grad, need) in enumerate(zip(grads, ctx.needs_input_grad[-4:])):
            if need:
                grad = grad.view(ctx.shape)
                if i == 3 and ctx.weighted_mean:  # d/dw_i of sum(w l) / sum(w) is (l_i - mean) / sum(w)
                    grad = grad - mean
            wanted.append(grad if need else None)
        scaled = scale_saved_gradients(ctx, grad_output, *wanted)
        result = [None if grad is None else grad.sum_to_size(operand[0]).to(operand[1])
                  for grad, operand in zip(scaled, ctx.operands)]
        return (None,) * 6 + tuple(result)


def _elementwise(name, operands, weight=None, reduction="mean", p0=0.0, p1=0.0, weighted_mean=False):
    """Run loss `name` through the kernel. operands: 2 or 3 tensors in the loss's signature
    order (broadcast together with the weight); `weighted_mean`: 'mean' divides by the weight
    sum (the regression losses) instead of the element count."""
    a, b, c = (list(operands) + [None])[:3]
    return _ElementwiseLoss.apply(LOSS_IDS[name], reduction, float(p0), float(p1),
                                  weighted_mean and reduction == "mean" and weight is not None,
                                  torch.is_grad_enabled(), a, b, c, weight)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    return _elementwise("binary_cross_entropy_with_logits", (input, target, pos_weight), weight, reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    return _elementwise("binary_cross_entropy", (input, target), weight, reduction)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    return _elementwise("sigmoid_focal_loss", (inputs, targets), None, reduction, alpha, gamma)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    return _elementwise("smooth_l1_loss", (input, target), None, reduction, beta)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    # torch 2.13's weighted Huber mean divides by the element count, not the weight sum
    return _elementwise("huber_loss", (input, target), weight, reduction, delta)


def l1_loss(input, target, reduction="mean", weight=None):
    return _elementwise("l1_loss", (input, target), weight, reduction, weighted_mean=True)


def mse_loss(input, target, reduction="mean", weight=None):
    return _elementwise("mse_loss", (input, target), weight, reduction, weighted_mean=True)


def margin_ranking_loss(input1, input2, target, margin=0.0, reduction="mean"):
    return _elementwise("margin_ranking_loss", (input1, input2, target), None, reduction, margin)


def rank_loss(label, left, right, reduction="mean"):
    return _elementwise("rank_loss", (label, left, right), None, reduction)


KERNELS = {
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "binary_cross_entropy": binary_cross_entropy,
    "sigmoid_focal_loss": sigmoid_focal_loss,
    "smooth_l1_loss": smooth_l1_loss,
    "huber_loss": huber_loss,
    "l1_loss": l1_loss,
    "mse_loss": mse_loss,
    "margin_ranking_loss": margin_ranking_loss,
    "rank_loss": rank_loss,
    "dice_loss": dice.dice_loss,
}
