"""The backward of a loss whose forward already wrote d(loss)/d(input): scale it by grad_output.

One flat pass over the saved gradient, in place (the buffer is the Function's alone). Each
program reads the scalar grad_output on the device and returns at once, touching nothing else,
when it is exactly 1, which is every `loss.backward()`: the backward then moves 4 bytes per
program instead of a read and a write of the whole gradient, with no host synchronisation to
find that out. Any other value (0, NaN and inf included) is multiplied in the accumulation dtype
and rounded once to the gradient's dtype, as torch's `grad * grad_output` rounds.

A grad_output that is not a single value (reduction='none') has nothing to skip: it is a plain
in-place multiply by torch.
"""
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, round_to, triton_accumulation


@triton.jit
def _scale_kernel(grad_ptr, grad_output_ptr, numel, ACC: tl.constexpr, BLOCK: tl.constexpr):
    scale = tl.load(grad_output_ptr).to(ACC)
    if scale != 1.0:
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < numel
        grad = tl.load(grad_ptr + offsets, mask=mask).to(ACC)
        tl.store(grad_ptr + offsets, round_to(grad * scale, grad_ptr.dtype.element_ty), mask=mask)


def scale_in_place(grad, grad_output):
    """`grad *= grad_output`, returning `grad`; free when grad_output is a single 1."""
    grad_output = grad_output.to(grad.dtype)
    if torch.broadcast_shapes(grad.shape, grad_output.shape) != grad.shape:
        return grad * grad_output  # a grad_output larger than the gradient: no in-place form
    if grad_output.numel() != 1 or not grad.is_contiguous():
        return grad.mul_(grad_output)
    if grad.numel():
        grid = (triton.cdiv(grad.numel(), ELEMENTWISE_BLOCK),)
        _scale_kernel[grid](grad, grad_output.reshape(1), grad.numel(),
                            ACC=triton_accumulation(grad.dtype), BLOCK=ELEMENTWISE_BLOCK)
    return grad


def scale_saved_gradients(ctx, grad_output, *grads):
    """The backward of a Function that saved its precomputed gradients `grads` on `ctx`: each
    scaled by grad_output (None entries pass through).

    The first backward scales the buffers in place. A second backward through the same graph
    (retain_graph=True) finds them as the first left them: still the unscaled gradients when the
    first grad_output was 1 (every `loss.backward()`), which this checks on the host, once, in
    that rare second call, and then scales copies. After any other first grad_output the buffers
    hold that product, which cannot be undone exactly, so the call raises and says so.
    """
    first = getattr(ctx, "first_grad_output", None)
    if first is None:
        ctx.first_grad_output = grad_output.detach()
        return [None if g is None else scale_in_place(g, grad_output) for g in grads]
    if not bool((first == 1).all()):
        raise RuntimeError(
            "fusedloss: a second backward through this loss after a first grad_output other than 1 "
            "is not supported (the forward's saved gradient was scaled in place); run the loss "
            "forward again for each backward")
    return [None if g is None else g * grad_output.to(g.dtype) for g in grads]
