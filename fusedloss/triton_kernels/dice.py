"""Dice loss: per sample 1 - 2 I / D, I = sum of the probabilities at the label class of each
row, D = sum of all probabilities + number of rows + epsilon (the one-hot label's sum).

Input (N, ..., C) is seen as N samples of R rows by C classes. Three launches, no torch ops
between them:
  sums     one program per tile of BLOCK_R rows of one sample (looping over the classes), which
           reads the input once and writes the tile's partial (sum, intersection). The label's
           one-hot is never built: a column is the label column when its index equals the
           row's label. Where the labels' range check is the call's (CUDA), it records it as
           it reads them: one verdict, one queued assert.
  finish   one program: each sample's partials summed in tile order (deterministic), its I, D
           and loss, and the reduction over the samples.
  gradient (backward) The gradient does not depend on the input values, only on each sample's
           I and D:
               d loss / d x[r, c] = 2 I / D**2 - [c == label[r]] * 2 / D,
           so nothing input-sized is saved: a write-only kernel produces grad_output times this
           directly (one pass, rather than a forward write plus a scaling pass), reading
           grad_output, I and D on the device.
"""
import torch
import triton
import triton.language as tl

from ._common import (ELEMENTWISE_BLOCK, accumulation_dtype, fp32_pair, round_to, row_warps,
                      triton_accumulation)
from .._autocast import loss_dtype

# Samples and tiles the finishing program sums per step.
_FINISH_SAMPLES = 32
_FINISH_TILES = 32


@triton.jit
def _tile(pid, tiles_per_sample, rows_per_sample, BLOCK_R: tl.constexpr):
    # program -> (global row indices of its tile, mask of the rows inside the sample)
    sample = pid // tiles_per_sample
    rows = (pid % tiles_per_sample) * BLOCK_R + tl.arange(0, BLOCK_R)
    return sample * rows_per_sample + rows, rows < rows_per_sample


@triton.jit
def _dice_sums_kernel(
    x_ptr, label_ptr,
    partial_ptr,             # (programs, 2): this tile's sum of x and its intersection with the label
    verdict_ptr,             # CHECK_LABELS: int32 one, cleared where a label is not a class
    tiles_per_sample, rows_per_sample, num_classes,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CHECK_LABELS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows, row_mask = _tile(pid, tiles_per_sample, rows_per_sample, BLOCK_R)
    label = tl.load(label_ptr + rows, mask=row_mask, other=0).to(tl.int64)  # int64 or uint8
    is_class = (label >= 0) & (label < num_classes)
    if CHECK_LABELS:
        tl.store(verdict_ptr + rows * 0, 0, mask=row_mask & ~is_class)
    label = tl.where(row_mask & is_class, label, -1).to(tl.int32)
    total = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    hit = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for start in range(0, num_classes, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols < num_classes)[None, :]
        x = tl.load(x_ptr + rows[:, None] * num_classes + cols[None, :], mask=mask, other=0).to(ACC)
        total += x
        hit += tl.where(cols[None, :] == label[:, None], x, 0.0)
    tl.store(partial_ptr + 2 * pid, tl.sum(tl.sum(total, axis=1), axis=0))
    tl.store(partial_ptr + 2 * pid + 1, tl.sum(tl.sum(hit, axis=1), axis=0))


@triton.jit
def _dice_finish_kernel(
    partial_ptr,             # (N * tiles, 2) the sums kernel's partials
    loss_ptr,                # (N,) per-sample losses, or the 0-d reduced loss (REDUCE)
    intersection_ptr, denominator_ptr,  # (N,) each sample's I and D, for the backward
    num_samples, tiles_per_sample, rows_per_sample, epsilon_hi, epsilon_lo,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    REDUCE: tl.constexpr, MEAN: tl.constexpr,
):
    """One program: per sample, its tiles' partials summed in tile order, I, D and the loss;
    with REDUCE their sum over the samples (the mean's over N: NaN for none, as torch's)."""
    epsilon = tl.full([BLOCK_N], epsilon_hi, ACC) + epsilon_lo
    losses = tl.zeros([BLOCK_N], ACC)
    for first in range(0, num_samples, BLOCK_N):
        samples = first + tl.arange(0, BLOCK_N)
        live = samples < num_samples
        # the tiles summed lane by lane, then across the lanes (a reduction inside this loop
        # failed triton 3.6's thread-locality pass)
        totals = tl.zeros([BLOCK_N, BLOCK_T], ACC)
        intersections = tl.zeros([BLOCK_N, BLOCK_T], ACC)
        for tile in range(0, tiles_per_sample, BLOCK_T):
            tiles = tile + tl.arange(0, BLOCK_T)
            at = 2 * (samples.to(tl.int64)[:, None] * tiles_per_sample + tiles[None, :])
            mask = live[:, None] & (tiles < tiles_per_sample)[None, :]
            totals += tl.load(partial_ptr + at, mask=mask, other=0.0)
            intersections += tl.load(partial_ptr + at + 1, mask=mask, other=0.0)
        total = tl.sum(totals, axis=1)
        intersection = tl.sum(intersections, axis=1)
        denominator = total + rows_per_sample + epsilon
        loss = 1 - 2 * intersection / denominator
        tl.store(intersection_ptr + samples, intersection, mask=live)
        tl.store(denominator_ptr + samples, denominator, mask=live)
        if REDUCE:
            losses += tl.where(live, loss, 0.0)
        else:
            tl.store(loss_ptr + samples, round_to(loss, loss_ptr.dtype.element_ty), mask=live)
    if REDUCE:
        reduced = tl.sum(losses, axis=0)
        if MEAN:
            reduced = reduced / num_samples
        tl.store(loss_ptr, round_to(reduced, loss_ptr.dtype.element_ty))


@triton.jit
def _dice_grad_kernel(
    label_ptr, grad_ptr,
    grad_output_ptr, stride_go,  # 0-d, or (N,) per sample (PER_SAMPLE; stride 0 when expanded)
    intersection_ptr, denominator_ptr,  # (N,) each sample's I and D
    num_samples, tiles_per_sample, rows_per_sample, num_classes,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    PER_SAMPLE: tl.constexpr, MEAN: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows, row_mask = _tile(pid, tiles_per_sample, rows_per_sample, BLOCK_R)
    sample = pid // tiles_per_sample
    if PER_SAMPLE:
        scale = tl.load(grad_output_ptr + sample * stride_go).to(ACC)
    else:
        scale = tl.load(grad_output_ptr).to(ACC)
    if MEAN:
        scale = scale / num_samples
    intersection = tl.load(intersection_ptr + sample)
    denominator = tl.load(denominator_ptr + sample)
    everywhere = scale * 2 * intersection / (denominator * denominator)
    at_label = -scale * 2 / denominator
    label = tl.load(label_ptr + rows, mask=row_mask, other=-1).to(tl.int32)
    for start in range(0, num_classes, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols < num_classes)[None, :]
        g = everywhere + tl.where(cols[None, :] == label[:, None], at_label, 0.0)
        tl.store(grad_ptr + rows[:, None] * num_classes + cols[None, :],
                 round_to(g, grad_ptr.dtype.element_ty), mask=mask)


def _launch_shape(shape):
    """(N, rows per sample, classes, tiles per sample, BLOCK_R, BLOCK_C) for input `shape`."""
    num_samples, num_classes = shape[0], shape[-1]
    rows = shape[1:-1].numel()
    block_c = min(triton.next_power_of_2(max(num_classes, 1)), ELEMENTWISE_BLOCK)
    block_r = min(ELEMENTWISE_BLOCK // block_c, triton.next_power_of_2(max(rows, 1)))
    return num_samples, rows, num_classes, triton.cdiv(rows, block_r), block_r, block_c


class _DiceLoss(torch.autograd.Function):

    @staticmethod
    def forward(ctx, input, label, epsilon, reduction, index_error):
        num_samples, rows, num_classes, tiles, block_r, block_c = _launch_shape(input.shape)
        device = input.device
        acc = accumulation_dtype(input.dtype)
        x = input.contiguous()
        label = label.contiguous()
        partial = torch.empty(num_samples * tiles, 2, device=device, dtype=acc)
        verdict = (torch.ones((), dtype=torch.int32, device=device) if index_error is not None
                   else partial)
        if partial.numel() > 0:
            _dice_sums_kernel[(num_samples * tiles,)](
                x, label, partial, verdict, tiles, rows, num_classes,
                ACC=triton_accumulation(acc), BLOCK_R=block_r, BLOCK_C=block_c,
                CHECK_LABELS=index_error is not None, num_warps=row_warps(block_r * block_c))
        if index_error is not None:  # queued: no host sync (the CPU checks before any launch)
            torch._assert_async(verdict, index_error)
        intersection, denominator = (torch.empty(num_samples, device=device, dtype=acc)
                                     for _ in "id")
        out_dtype = loss_dtype(input.dtype, device)
        loss = torch.empty((num_samples,) if reduction == "none" else (), device=device,
                           dtype=out_dtype)
        _dice_finish_kernel[(1,)](
            partial, loss, intersection, denominator, num_samples, tiles, rows,
            *fp32_pair(epsilon), ACC=triton_accumulation(acc), BLOCK_N=_FINISH_SAMPLES,
            BLOCK_T=_FINISH_TILES, REDUCE=reduction != "none", MEAN=reduction == "mean")
        ctx.save_for_backward(label, intersection, denominator)
        ctx.reduction, ctx.shape, ctx.dtype = reduction, input.shape, input.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        label, intersection, denominator = ctx.saved_tensors
        num_samples, rows, num_classes, tiles, block_r, block_c = _launch_shape(ctx.shape)
        grad = torch.empty(ctx.shape, device=label.device, dtype=ctx.dtype)
        if grad.numel() > 0:
            per_sample = ctx.reduction == "none"
            _dice_grad_kernel[(num_samples * tiles,)](
                label, grad, grad_output, grad_output.stride(0) if per_sample else 0,
                intersection, denominator, num_samples, tiles, rows, num_classes,
                ACC=triton_accumulation(denominator.dtype), BLOCK_R=block_r, BLOCK_C=block_c,
                PER_SAMPLE=per_sample, MEAN=ctx.reduction == "mean",
                num_warps=row_warps(block_r * block_c))
        return grad, None, None, None, None


def dice_loss(input, label, epsilon=1e-5, reduction="mean", queued_index_error=None):
    """queued_index_error: where the labels' range check is the call's (CUDA), its message: the
    sums launch records it as it reads the labels."""
    return _DiceLoss.apply(input, label, epsilon, reduction, queued_index_error)


KERNELS = {"dice_loss": dice_loss}
