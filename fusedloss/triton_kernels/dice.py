"""Dice loss: per sample 1 - 2 I / D, I = sum of the probabilities at the label class of each
row, D = sum of all probabilities + number of rows + epsilon (the one-hot label's sum).

Input (N, ..., C) is seen as N samples of R rows by C classes. The forward sweep reads the input
once: each program takes one tile of BLOCK_R rows of one sample (looping over the classes) and
writes that tile's partial (sum, intersection); a torch sum over each sample's tiles finishes
them deterministically. The label's one-hot is never built: a column is the label column when
its index equals the row's label.

The gradient does not depend on the input values, only on each sample's I and D:
    d loss / d x[r, c] = 2 I / D**2 - [c == label[r]] * 2 / D,
so nothing input-sized is saved: the backward launches a write-only kernel that produces
grad_output times this directly (one pass, rather than a forward write plus a scaling pass).
"""
import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import ELEMENTWISE_BLOCK, accumulation_dtype, round_to, row_warps, triton_accumulation
from .._autocast import loss_dtype


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
    tiles_per_sample, rows_per_sample, num_classes,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows, row_mask = _tile(pid, tiles_per_sample, rows_per_sample, BLOCK_R)
    label = tl.load(label_ptr + rows, mask=row_mask, other=-1).to(tl.int32)
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
def _dice_grad_kernel(
    label_ptr, grad_ptr,
    coef_ptr,                # (N, 2) per sample: grad_output * 2I/D**2 and -grad_output * 2/D
    tiles_per_sample, rows_per_sample, num_classes,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows, row_mask = _tile(pid, tiles_per_sample, rows_per_sample, BLOCK_R)
    sample = pid // tiles_per_sample
    everywhere = tl.load(coef_ptr + 2 * sample).to(ACC)
    at_label = tl.load(coef_ptr + 2 * sample + 1).to(ACC)
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
    def forward(ctx, input, label, epsilon, reduction):
        num_samples, rows, num_classes, tiles, block_r, block_c = _launch_shape(input.shape)
        acc = accumulation_dtype(input.dtype)
        x = input.contiguous()
        label = label.contiguous()
        partial = torch.empty(num_samples * tiles, 2, device=input.device, dtype=acc)
        if partial.numel() > 0:
            _dice_sums_kernel[(num_samples * tiles,)](
                x, label, partial, tiles, rows, num_classes,
                ACC=triton_accumulation(acc), BLOCK_R=block_r, BLOCK_C=block_c,
                num_warps=row_warps(block_r * block_c))
        total, intersection = partial.view(num_samples, tiles, 2).sum(1).unbind(1)
        denominator = total + rows + epsilon
        loss = 1 - 2 * intersection / denominator
        ctx.save_for_backward(label, intersection, denominator)
        ctx.reduction, ctx.shape, ctx.dtype = reduction, input.shape, input.dtype
        return reduce(loss, reduction).to(loss_dtype(input.dtype, input.device))

    @staticmethod
    def backward(ctx, grad_output):
        label, intersection, denominator = ctx.saved_tensors
        num_samples, rows, num_classes, tiles, block_r, block_c = _launch_shape(ctx.shape)
        scale = grad_output.to(denominator.dtype).expand(num_samples)  # per-sample grad_output
        if ctx.reduction == "mean":
            scale = scale / num_samples
        coef = torch.stack([scale * 2 * intersection / denominator ** 2, -scale * 2 / denominator], 1)
        grad = torch.empty(ctx.shape, device=label.device, dtype=ctx.dtype)
        if grad.numel() > 0:
            _dice_grad_kernel[(num_samples * tiles,)](
                label, grad, coef, tiles, rows, num_classes,
                ACC=triton_accumulation(denominator.dtype), BLOCK_R=block_r, BLOCK_C=block_c,
                num_warps=row_warps(block_r * block_c))
        return grad, None, None, None


def dice_loss(input, label, epsilon=1e-5, reduction="mean"):
    return _DiceLoss.apply(input, label, epsilon, reduction)


KERNELS = {"dice_loss": dice_loss}
