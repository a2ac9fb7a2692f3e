"""The autograd plumbing of losses whose forward sweep writes d loss / d input: which gradients a
call wants, the one autograd Function whose backward scales the precomputed gradients by
grad_output, and that scaling itself.

The backward scales each gradient in place (the buffers are the loss's own). For a single
grad_output value (a reduced loss) that is one flat kernel whose programs read grad_output on
the device and return at once, touching nothing else, when it is exactly 1, which is every
`loss.backward()`: the backward then moves 4 bytes per program instead of a read and a write of
the gradient, with no host synchronisation to find that out. Any other value (0, NaN and inf
included) is multiplied in the accumulation dtype and rounded once to the gradient's dtype, as
torch's `grad * grad_output` rounds. A per-element grad_output (reduction='none') has nothing to
skip: it is an in-place multiply by torch.

A kernel returns its sweep through `precomputed_gradient`, which picks one of three ways:
plain outputs when nothing needs a gradient (no autograd Function at all); the sweep handed to
the dispatcher's Function (fusedloss/_dispatch.py) when that one records the call, so a call
costs one Function and its backward scales the buffers without walking a graph
(SweepCapture); else PrecomputedGradient, this module's Function (a kernel called directly,
inplace_backward=True, or an input the kernel transforms before its sweep).

The dispatcher runs this backward once per forward and takes every other derivative
(create_graph, a second backward, forward mode) from the reference, except for
inplace_backward=True, whose logits hold the gradient: there a second backward through a
retained graph finds the buffers as the first left them, still the unscaled gradients when the
first grad_output was 1, which it checks on the host, once, in that rare call, and then scales
copies; after any other first grad_output the buffers hold that product, which cannot be undone
exactly, so it raises and says so, as it does for a backward asked to build a graph.
"""
import contextlib
import dataclasses
import threading
import typing

import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, broadcast_shape, round_to, triton_accumulation


def wanted_gradients(*tensors):
    """Per tensor (None allowed): whether the call must produce its gradient. Asked before the
    autograd Function runs: inside its forward grad mode is off, and needs_input_grad ignores
    no_grad mode (an evaluation loop), where no gradient is due."""
    enabled = torch.is_grad_enabled()
    return tuple(t is not None and t.requires_grad and enabled for t in tensors)


def scale_gradient(grad, grad_output, dtype):
    """grad * grad_output as a new tensor of `dtype`, in one pass, where grad_output is a scalar
    (reduced loss) or a tensor the caller has shaped to broadcast against `grad`
    (reduction='none'): for the losses whose backward goes on computing with the product;
    PrecomputedGradient scales in place. The multiply runs in the wider of the two dtypes and
    rounds once into `dtype`: a float32 grad_output (an autocast loss) may not fit a 16-bit
    gradient's range (a GradScaler's 65536 is inf in float16) while the product does."""
    wide = torch.promote_types(grad.dtype, grad_output.dtype)
    if dtype == grad.dtype == wide:
        return grad * grad_output
    return torch.mul(grad.to(wide), grad_output,
                     out=torch.empty(grad.shape, dtype=dtype, device=grad.device))


@triton.jit
def _scale_block(grad_ptr, offsets, mask, scale, ACC: tl.constexpr):
    grad = tl.load(grad_ptr + offsets, mask=mask).to(ACC)
    tl.store(grad_ptr + offsets, round_to(grad * scale, grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_kernel(grad_ptr, grad_output_ptr, numel, ACC: tl.constexpr, BLOCK: tl.constexpr):
    scale = tl.load(grad_output_ptr).to(ACC)
    if scale != 1.0:
        start = tl.program_id(0).to(tl.int64) * BLOCK
        offsets = start + tl.arange(0, BLOCK)
        # a whole block unmasked: a mask against a numel not known to be a multiple of 16 (an
        # odd vocabulary's gradient) would make every access scalar; the last block is masked
        if start + BLOCK <= numel:
            _scale_block(grad_ptr, offsets, None, scale, ACC)
        else:
            _scale_block(grad_ptr, offsets, offsets < numel, scale, ACC)


def scale_in_place(grad, grad_output):
    """`grad *= grad_output`, returning `grad`; free when grad_output is a single 1. The product
    is taken in the accumulation dtype and rounded once to grad's (scale_gradient says why)."""
    if broadcast_shape(grad.shape, grad_output.shape) != grad.shape:
        return scale_gradient(grad, grad_output, grad.dtype)  # broadcasts beyond grad: not in place
    if grad_output.numel() != 1 or not grad.is_contiguous():
        return grad.mul_(grad_output)  # in the promoted dtype, rounded once to grad's
    if grad.numel():
        grid = (triton.cdiv(grad.numel(), ELEMENTWISE_BLOCK),)
        _scale_kernel[grid](grad, grad_output.reshape(1), grad.numel(),  # read in its own dtype
                            ACC=triton_accumulation(grad.dtype), BLOCK=ELEMENTWISE_BLOCK)
    return grad


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
    overwritten: the index of the input whose storage holds its own gradient (cross entropy's
        inplace_backward), or None.
    The gradients are the loss's own buffers (the backward scales them in place).
    """
    outputs: tuple
    gradients: list
    shape_grad_output: typing.Callable = _same
    finish: typing.Callable = _unchanged
    overwritten: typing.Optional[int] = None


_OVERWRITTEN_USED = (
    "one of the variables needed for gradient computation has been modified by an inplace "
    "operation: fusedloss's inplace_backward=True overwrote the logits with their gradient in the "
    "forward, and they were used after it; read what you need from the logits before the loss, or "
    "drop inplace_backward")


def _mark_overwritten(ctx, tensor):
    """Make every later autograd-recorded use of `tensor` (which now holds its gradient) an error.

    A non-leaf is marked dirty: autograd rebases it onto this Function, so a use recorded before
    the forward fails torch's version check and one recorded after it sends a gradient into this
    Function's backward, which refuses it. A leaf that requires grad cannot be marked dirty
    (torch refuses in-place writes into one), so its version counter is bumped instead: uses
    saved before the forward fail torch's check; its .grad is then its own storage.
    Returns the tensor to add to the outputs (None for a leaf).
    """
    if tensor.is_leaf:
        torch.autograd.graph.increment_version(tensor)
        return None
    ctx.mark_dirty(tensor)
    return tensor


class PrecomputedGradient(torch.autograd.Function):
    """apply(sweep, *inputs): `sweep(*inputs)` launches the kernel and returns a `Sweep`; the
    backward scales its gradients by grad_output (module header)."""

    @staticmethod
    def forward(ctx, sweep, *inputs):
        result = sweep(*inputs)
        # saved, not kept on ctx: autograd frees them after a backward that does not retain the
        # graph, so the gradient it hands on is the only reference (AccumulateGrad takes it as
        # .grad instead of copying)
        ctx.wanted = [grad is not None for grad in result.gradients]
        ctx.tensor_inputs = [isinstance(t, torch.Tensor) for t in inputs]  # those have edges
        ctx.save_for_backward(*[grad for grad in result.gradients if grad is not None])
        ctx.shape_grad_output, ctx.finish = result.shape_grad_output, result.finish
        ctx.first_grad_output = None
        loss, *extras = result.outputs
        ctx.mark_non_differentiable(*extras)
        overwritten = None
        if result.overwritten is not None:
            overwritten = _mark_overwritten(ctx, inputs[result.overwritten])
        ctx.overwritten_output = overwritten is not None
        if ctx.overwritten_output:
            ctx.set_materialize_grads(False)  # a None gradient there: the logits unused after
            return (loss, *extras, overwritten)
        return (loss, *extras) if extras else loss

    @staticmethod
    def backward(ctx, grad_output, *extra_grads):
        if ctx.overwritten_output and extra_grads[-1] is not None:
            raise RuntimeError(_OVERWRITTEN_USED)
        # with grad mode off below, nothing here is recorded; the dispatcher routes every
        # create_graph elsewhere but inplace_backward's (no once_differentiable: it would hand
        # back a gradient with no graph, silently, when grad_output does not require grad)
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fusedloss: a differentiable backward (create_graph=True, e.g. a double backward) "
                "of a loss with inplace_backward=True is not supported: the logits hold the "
                "gradient, so nothing is left to differentiate it from; drop inplace_backward")
        if grad_output is None:
            return (None,) * (len(ctx.wanted) + 1)
        factor = ctx.shape_grad_output(grad_output)
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) if wanted else None for wanted in ctx.wanted]
        if ctx.first_grad_output is None:
            ctx.first_grad_output = factor.detach()
            # .data: the buffers are this Function's own, and a retained graph must still
            # unpack them (the second-backward rule above, not the version counter, guards them)
            scaled = [None if g is None else scale_in_place(g.data, factor) for g in grads]
        elif bool((ctx.first_grad_output == 1).all()):  # a second backward: the host check is once
            scaled = [None if g is None else scale_gradient(g, factor, g.dtype) for g in grads]
        else:
            raise RuntimeError(
                "fusedloss: a second backward through this loss after a first grad_output other "
                "than 1 is not supported (the forward's gradient was scaled in place); run the "
                "loss forward again for each backward")
        return (None, *[None if g is None else ctx.finish(i, g) for i, g in enumerate(scaled)])


class SweepCapture:
    """A sweep run for the dispatcher's autograd Function, which owns its backward.

    Under `capturing(leaves)`, the first `precomputed_gradient` call whose inputs that need a
    gradient are distinct `leaves` runs its sweep with no autograd Function of its own and
    hands the Sweep here: one Function per call instead of two, and a backward that scales the
    buffers without walking a graph (benchmarks/host_time.py measures what that saves). A call
    whose kernel transforms such an input first (a reshape, a cast) is not captured and records
    its own Function, which the dispatcher differentiates through autograd.
    """

    def __init__(self, leaves):
        self.leaves = leaves
        self.sweep = None
        self.positions = None  # per input of the sweep: the index of its leaf, or None

    def takes(self, inputs):
        positions = []
        for tensor in inputs:
            position = None
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                position = next((i for i, leaf in enumerate(self.leaves) if leaf is tensor), None)
                if position is None or position in positions:
                    return False
            positions.append(position)
        self.positions = positions
        return True

    def gradients(self, grad_output):
        """Per leaf: d loss / d leaf times grad_output, None where none is due; the buffers are
        scaled in place, so this runs once."""
        sweep = self.sweep
        factor = sweep.shape_grad_output(grad_output)
        grads = [None] * len(self.leaves)
        for index, (position, grad) in enumerate(zip(self.positions, sweep.gradients)):
            if position is not None and grad is not None:
                grads[position] = sweep.finish(index, scale_in_place(grad, factor))
        return grads


_capture = threading.local()


@contextlib.contextmanager
def capturing(leaves):
    """The body's first capturable sweep over `leaves` lands in the SweepCapture yielded."""
    capture, previous = SweepCapture(leaves), getattr(_capture, "current", None)
    _capture.current = capture
    try:
        yield capture
    finally:
        _capture.current = previous


def _outputs(sweep):
    loss, *extras = sweep.outputs
    return (loss, *extras) if extras else loss


def precomputed_gradient(sweep, *inputs):
    """What a kernel whose forward writes its gradients returns: `sweep(*inputs)`'s outputs,
    through PrecomputedGradient when autograd records the call, plain when nothing needs a
    gradient (an evaluation loop pays for no autograd Function), and captured for the
    dispatcher's Function (SweepCapture) when that one records it."""
    capture = getattr(_capture, "current", None)
    if capture is not None and capture.takes(inputs):
        _capture.current = None  # the first sweep only: the one the kernel returns
        with torch.no_grad():  # as inside an autograd Function's forward
            capture.sweep = sweep(*inputs)
        return _outputs(capture.sweep)
    if not torch.is_grad_enabled() or not any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        return _outputs(sweep(*inputs))
    return PrecomputedGradient.apply(sweep, *inputs)
