"""The autograd plumbing of losses whose forward sweep writes d loss / d input: which gradients a
call wants, the one autograd Function whose backward scales the precomputed gradients by
grad_output, and that scaling itself.

The backward is one read and one write of each gradient (grad_output is a tensor on the device,
never assumed to be 1 and never read on the host), done in place where the gradient buffer is
the loss's own (then a second backward through the graph raises instead of scaling twice).
"""
import dataclasses
import typing

import torch


def wanted_gradients(*tensors):
    """Per tensor (None allowed): whether the call must produce its gradient. Asked before the
    autograd Function runs: inside its forward grad mode is off, and needs_input_grad ignores
    no_grad mode (an evaluation loop), where no gradient is due."""
    enabled = torch.is_grad_enabled()
    return tuple(t is not None and t.requires_grad and enabled for t in tensors)


def scale_gradient(grad, grad_output, inplace):
    """grad * grad_output, where grad_output is a scalar (reduced loss) or, for reduction='none',
    a tensor the caller has shaped to broadcast against `grad`."""
    grad_output = grad_output.to(grad.dtype)
    return grad.mul_(grad_output) if inplace else grad * grad_output


def _same(grad_output):
    return grad_output


def _unchanged(index, grad):
    return grad


@dataclasses.dataclass
class Sweep:
    """What a loss's forward sweep hands its backward.

    outputs: the loss, then any non-differentiable extras (the per-token lse).
    gradients: per input of the Function, d loss / d input or None where none is wanted.
    shape_grad_output: grad_output -> the factor that broadcasts against every gradient (a
        per-token grad_output gets unit class dimensions; a weighted mean divides by its sum).
    finish: (input index, scaled gradient) -> the gradient autograd receives (summed back to a
        broadcast input's shape, cast to its dtype).
    inplace: the gradients are the loss's own buffers: scale them in place, once.
    """
    outputs: tuple
    gradients: list
    shape_grad_output: typing.Callable = _same
    finish: typing.Callable = _unchanged
    inplace: bool = False


class PrecomputedGradient(torch.autograd.Function):
    """apply(sweep, *inputs): `sweep(*inputs)` launches the kernel and returns a `Sweep`; the
    backward scales its gradients by grad_output."""

    @staticmethod
    def forward(ctx, sweep, *inputs):
        result = sweep(*inputs)
        ctx.sweep = result  # on ctx, not saved: an in-place backward consumes the buffers
        loss, *extras = result.outputs
        if not extras:
            return loss
        ctx.mark_non_differentiable(*extras)
        return (loss, *extras)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, *unused_extra_grads):
        result = ctx.sweep
        if result.gradients is None:
            raise RuntimeError(
                "this fused loss computed its gradient in the forward and its backward scaled it "
                "in place: backward through it a second time (retain_graph=True) is not "
                "supported; call it again instead")
        factor = result.shape_grad_output(grad_output)
        grads = [None if grad is None
                 else result.finish(i, scale_gradient(grad, factor, result.inplace))
                 for i, grad in enumerate(result.gradients)]
        if result.inplace:
            result.gradients = None
        return (None, *grads)
