"""Linear + cross entropy: the loss of the logits X @ W^T + b without ever holding the (N, V)
logits, nor any (V, H) buffer beyond the returned gradient, tiled over tokens and vocabulary.

Algorithm (blocks of R tokens x C classes, `chunk_shape`; the matmuls are cuBLAS, the softmax
part is the cross-entropy row kernel of cross_entropy.py in its vocabulary-chunk modes):
  pass 1  for each vocabulary chunk W_v and token chunk X_c: logits = X_c @ W_v^T (+ b_v) into
          an (R, C) buffer, fp32 for 16-bit inputs (cuBLAS reads 16-bit operands and writes
          fp32: logits rounded to 16 bits lose more than the tolerance allows); the row kernel
          merges the block's per-token statistics (online max and sum of exponentials, the
          smoothing or soft-label sums, the target logit where the target lies in the chunk)
          into (N, STATS) running ones, in chunk order.
  pass 2  for each vocabulary chunk v, for each token chunk c: the logits block again; the row
          kernel reads the final statistics and writes each token's loss (and lse) and
          d loss / d logits of the block, divided by the 'mean' denominator (the kept targets'
          summed weights, or N for soft labels; on the device) or times the per-token
          grad_output for 'none', over the logits themselves, or for 16-bit inputs into a
          16-bit (R, C) buffer, the tensor cores' operand. Then grad_X_c += dlogits @ W_v (fp32
          for 16-bit inputs), grad_W_v += dlogits^T @ X_c into a (C, H) fp32 accumulator summed
          over the token chunks and rounded once into grad_W's rows (fp32 and fp64 accumulate
          in grad_W itself), grad_b_v += the column sums (fp32). Each product runs only for a
          tensor that requires grad; without any, pass 2 is one launch per token chunk that
          writes the losses from the statistics and reads no logits.
  reduction 'mean' / 'sum': both passes in the forward; the backward scales the gradients in
    place by the scalar grad_output (grad_X and grad_b rounded to 16 bits after it; grad_W,
    kept in its own dtype because its fp32 copy is 2.4 GB at V = 256000, H = 2304, before it:
    a grad_output other than 1 rounds grad_W twice, at most half an ulp more).
  reduction 'none' with gradients: the forward runs pass 1 and writes the losses; the backward,
    given the per-token grad_output, runs pass 2 from the saved statistics.
Kept between forward and backward: the gradients ('mean'/'sum') or the inputs and the O(N)
statistics ('none'). FLOPs: 2 N H V for pass 1, 6 N H V for pass 2: 8 N H V in all.
Memory beyond the inputs and the returned gradients: the logits block (R x C, fp32 for 16-bit
inputs, plus its 16-bit gradient), grad_W_v (C x H fp32, 16-bit inputs), grad_X (N x H fp32,
16-bit inputs), grad_b (V fp32) and O(N) per-token values; benchmarks/lce_memory.py measures the
peak (tests/test_kernel_linear_cross_entropy_memory.py holds it to 256 MiB at N = 8192,
H = 2304, V = 256000 in bf16). Deterministic: no atomics, a fixed chunk order.

Soft (probability) targets take the same path: the row kernel reads each block of the (N, V)
target through its strides.
"""
import dataclasses
import functools

import torch

from .._reduction import reduce
from ._common import GPU_LAUNCH_PARAMS, accumulation_dtype
from .._autocast import loss_dtype
from ._precomputed_gradient import Sweep, precomputed_gradient, wanted_gradients
from .cross_entropy import _check_no_grad, _hard_denominator, initial_stats, launch_row_kernel

# (tokens, classes) of a logits block on the GPU. 4096 tokens are the inner dimension of
# grad_W_v += dlogits^T @ X_c and 4096 classes that of grad_X_c += dlogits @ W_v: each product
# does 8192 flops per element of its fp32 accumulator read and written, compute-bound on an H100
# (~300 flops per HBM byte). Memory: the block is 96 MiB for 16-bit inputs (fp32 logits + 16-bit
# gradient) and grad_W_v 36 MiB at H = 2304, which with grad_X's fp32 (72 MiB at N = 8192) keeps
# the whole call within 256 MiB beyond its inputs and gradients. The interpreter's blocks are
# small, so that its tests split the tokens, the classes, and a chunk into row-kernel blocks
# (1100 > its 1024-class row block), through the same code.
GPU_CHUNK = (4096, 4096)
INTERPRETER_CHUNK = (8, 1100)
CHUNK = GPU_CHUNK if GPU_LAUNCH_PARAMS else INTERPRETER_CHUNK


def chunk_shape(num_rows, num_classes):
    """(rows, classes) of a logits block: CHUNK, at most the problem's own size."""
    return max(1, min(num_rows, CHUNK[0])), max(1, min(num_classes, CHUNK[1]))


def _spans(total, size):
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _matmul_into(out, a, b, addend=None):
    """out = addend + a @ b (addend: None, out itself to accumulate, or a broadcast bias); out
    may be fp32 where a and b are 16-bit."""
    beta = 0 if addend is None else 1  # beta 0: whatever out held (even NaN) is ignored
    addend = out if addend is None else addend.to(out.dtype)
    if out.dtype == a.dtype:
        torch.addmm(addend, a, b, beta=beta, out=out)
    elif a.is_cuda and hasattr(torch.ops.aten.addmm, "dtype_out"):
        # cuBLAS reads the 16-bit operands and writes the fp32 result directly (torch >= 2.8)
        torch.addmm(addend, a, b, out_dtype=out.dtype, beta=beta, out=out)
    else:  # CPU (the interpreter's tests): upcast the operands, exact
        torch.addmm(addend, a.to(out.dtype), b.to(out.dtype), beta=beta, out=out)


@dataclasses.dataclass
class _Problem:
    """One call's operands: x (N, H), linear_weight (V, H), linear_bias (V,) or None, target
    (N,) class indices or (N, V) probabilities, class_weight (V,) or None."""
    x: torch.Tensor
    linear_weight: torch.Tensor
    linear_bias: object
    target: torch.Tensor
    class_weight: object
    options: dict

    @property
    def soft(self):
        return self.target.is_floating_point()

    @property
    def acc(self):
        return accumulation_dtype(self.x.dtype)

    def spans(self):
        """(token spans, class spans) of the blocks."""
        rows, classes = chunk_shape(self.x.shape[0], self.linear_weight.shape[0])
        return _spans(self.x.shape[0], rows), _spans(self.linear_weight.shape[0], classes)

    def logits(self, buffer, tokens, classes):
        """The (tokens, classes) block of the logits, computed into `buffer`."""
        (t0, t1), (c0, c1) = tokens, classes
        block = buffer[:t1 - t0, :c1 - c0]
        bias = None if self.linear_bias is None else self.linear_bias[c0:c1]
        _matmul_into(block, self.x[t0:t1], self.linear_weight[c0:c1].t(), bias)
        return block

    def row_kernel(self, logits, tokens, classes, stats, loss=None, lse=None, grad=None,
                   denominator=None, token_scale=None):
        """The row kernel on one block: merges its statistics into `stats` when `loss` is None
        (an ignored token's too when `lse` is given), else writes loss, lse and d loss / d logits
        into `grad` from the final statistics."""
        (t0, t1), (c0, c1) = tokens, classes
        target = (self.target[t0:t1, c0:c1].unsqueeze(-1) if self.soft
                  else self.target[t0:t1])
        options = self.options
        launch_row_kernel(
            logits.unsqueeze(-1), target, self.class_weight,
            None if grad is None else grad.unsqueeze(-1),
            stats[t0:t1] if loss is None else loss[t0:t1],
            None if lse is None else lse[t0:t1], denominator, soft=self.soft, focal=False,
            ignore_index=options["ignore_index"], label_smoothing=options["label_smoothing"],
            z_loss=options["z_loss"], softcap=options["softcap"], stats=stats[t0:t1],
            from_stats=loss is not None, class_offset=c0,
            total_classes=self.linear_weight.shape[0],
            token_scale=None if token_scale is None else token_scale[t0:t1])

    def logits_buffer(self):
        rows, classes = chunk_shape(self.x.shape[0], self.linear_weight.shape[0])
        return torch.empty((rows, classes), dtype=self.acc, device=self.x.device)


def _statistics(problem, buffer, lse):
    """Pass 1: the (N, STATS) row statistics of the whole vocabulary (with `lse`, the ignored
    tokens' too)."""
    stats = initial_stats(problem.x.shape[0], problem.acc, problem.x.device)
    token_spans, class_spans = problem.spans()
    for classes in class_spans:
        for tokens in token_spans:
            problem.row_kernel(problem.logits(buffer, tokens, classes), tokens, classes, stats,
                               lse=lse)
    return stats


def _losses_and_gradients(problem, buffer, stats, loss, lse=None, denominator=None,
                          grads=(None, None, None), token_scale=None):
    """Pass 2: per-token loss and lse, and the (grad_x, grad_w, grad_b) buffers filled (None for
    those not wanted); token_scale, (N,) or None, is the per-token grad_output."""
    grad_x, grad_w, grad_b = grads
    token_spans, class_spans = problem.spans()
    if all(g is None for g in grads):  # the losses alone: the statistics suffice
        for t0, t1 in token_spans:  # (the logits block's values are not read)
            problem.row_kernel(buffer[:t1 - t0, :class_spans[0][1]], (t0, t1), class_spans[0],
                               stats, loss, lse, None, denominator)
        return
    x, linear_weight = problem.x, problem.linear_weight
    sixteen_bit = problem.acc != x.dtype
    # in place, except for 16-bit inputs: the products multiply 16-bit operands
    grad_buffer = torch.empty_like(buffer, dtype=x.dtype) if sixteen_bit else buffer
    grad_w_rows = None
    if grad_w is not None and sixteen_bit:
        grad_w_rows = torch.empty((buffer.shape[1], x.shape[1]), dtype=problem.acc,
                                  device=x.device)
    for class_index, classes in enumerate(class_spans):
        c0, c1 = classes
        w_rows = grad_w_rows[:c1 - c0] if grad_w_rows is not None else (
            None if grad_w is None else grad_w[c0:c1])
        for token_index, tokens in enumerate(token_spans):
            t0, t1 = tokens
            logits = problem.logits(buffer, tokens, classes)
            dlogits = grad_buffer[:t1 - t0, :c1 - c0]
            problem.row_kernel(logits, tokens, classes, stats, loss, lse, dlogits, denominator,
                               token_scale)
            if grad_x is not None:
                _matmul_into(grad_x[t0:t1], dlogits, linear_weight[c0:c1],
                             None if class_index == 0 else grad_x[t0:t1])
            if grad_w is not None:
                _matmul_into(w_rows, dlogits.t(), x[t0:t1], None if token_index == 0 else w_rows)
            if grad_b is not None:
                grad_b[c0:c1] += dlogits.sum(0, dtype=grad_b.dtype)
        if grad_w_rows is not None:
            grad_w[c0:c1].copy_(w_rows)  # rounded once


def _gradient_buffers(x, linear_weight, linear_bias, needs):
    """(grad_x, grad_w, grad_b): grad_x and grad_b in fp32 for 16-bit inputs (rounded once,
    after the backward's scaling), grad_w in its own dtype (module header); None where no
    gradient is wanted. Pass 2 writes every element of grad_x and grad_w, when it runs at all."""
    need_x, need_w, need_b = needs
    acc = accumulation_dtype(x.dtype)
    written = torch.empty if x.shape[0] else torch.zeros  # no tokens: no pass 2
    return (torch.empty(x.shape, dtype=acc, device=x.device) if need_x else None,
            written(linear_weight.shape, dtype=x.dtype, device=x.device) if need_w else None,
            torch.zeros(linear_bias.shape, dtype=acc, device=x.device) if need_b else None)


def _flat_target(target):
    """Per token: a row of probabilities (read through its strides) or one class index."""
    if target.is_floating_point():
        return target.reshape(-1, target.shape[-1])
    return target.reshape(-1).contiguous()


def _problem(input, linear_weight, linear_bias, target, class_weight, options):
    return _Problem(input.reshape(-1, input.shape[-1]), linear_weight, linear_bias,  # (H,): a row
                    _flat_target(target), class_weight, options)


def _forward(problem, token_shape, grads):
    """Passes 1 and 2, filling the `grads` buffers (None where not wanted); returns (the reduced
    loss, and the per-token lse when asked for) and the statistics."""
    num_rows = problem.x.shape[0]
    reduction = problem.options["reduction"]
    loss = torch.empty(num_rows, dtype=problem.acc, device=problem.x.device)
    lse = torch.empty_like(loss) if problem.options["return_lse"] else None
    denominator = None
    if reduction == "mean" and problem.soft:
        denominator = torch.full((), num_rows, dtype=problem.acc, device=problem.x.device)
    elif reduction == "mean":
        denominator = _hard_denominator(problem.target, problem.class_weight,
                                        problem.options["ignore_index"], problem.acc)
    stats = None
    if num_rows:
        buffer = problem.logits_buffer()
        stats = _statistics(problem, buffer, lse)
        _losses_and_gradients(problem, buffer, stats, loss, lse, denominator, grads)
    reduced = reduce(loss.view(token_shape), reduction, denominator).to(
        loss_dtype(problem.x.dtype, problem.x.device))
    return ((reduced,) if lse is None else (reduced, lse.view(token_shape))), stats


def _rounded(grad, like):
    """A gradient buffer rounded once to its input's dtype (a no-op where it has it) and shape."""
    return grad.to(like.dtype).view(like.shape)


def _precomputed(options, input, linear_weight, linear_bias, target, class_weight):
    """'mean' and 'sum' (or no gradient at all): the forward writes the three gradients, which
    the backward scales in place by the scalar grad_output."""
    problem = _problem(input, linear_weight, linear_bias, target, class_weight, options)
    wanted = any(options["needs"])
    grads = (_gradient_buffers(problem.x, linear_weight, linear_bias, options["needs"]) if wanted
             else (None, None, None))
    outputs, _ = _forward(problem, input.shape[:-1], grads)
    inputs = (input, linear_weight, linear_bias)
    return Sweep(outputs, [*grads, None, None], finish=lambda i, grad: _rounded(grad, inputs[i]))


class _PerTokenLinearCrossEntropy(torch.autograd.Function):
    """reduction='none' with gradients: the per-token grad_output is unknown in the forward, so
    the forward runs pass 1 and the losses, and the backward pass 2 with it folded into the
    kernel's gradient (module header)."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, class_weight, options):
        problem = _problem(input, linear_weight, linear_bias, target, class_weight, options)
        outputs, stats = _forward(problem, input.shape[:-1], (None, None, None))
        ctx.options = options
        ctx.save_for_backward(input, linear_weight, linear_bias, target, class_weight, stats)
        if len(outputs) == 1:
            return outputs[0]
        ctx.mark_non_differentiable(outputs[1])
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, *unused_lse_grad):
        input, linear_weight, linear_bias, target, class_weight, stats = ctx.saved_tensors
        problem = _problem(input, linear_weight, linear_bias, target, class_weight, ctx.options)
        grads = _gradient_buffers(problem.x, linear_weight, linear_bias, ctx.options["needs"])
        if stats is not None:  # some tokens
            scratch_loss = torch.empty(problem.x.shape[0], dtype=problem.acc, device=input.device)
            token_scale = grad_output.reshape(-1).to(problem.acc).contiguous()  # may be expanded
            _losses_and_gradients(problem, problem.logits_buffer(), stats, scratch_loss,
                                  grads=grads, token_scale=token_scale)
        inputs = (input, linear_weight, linear_bias)
        return (*[None if g is None else _rounded(g, t) for g, t in zip(grads, inputs)],
                None, None, None)


def linear_cross_entropy(input, linear_weight, target, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, return_lse=False):
    """cross_entropy(input @ linear_weight.T + linear_bias, target, ...) without the (N, V)
    logits: blocks of tokens and classes through cuBLAS and the fused cross-entropy kernel
    (module header).

    input (N, H) or (H,) with a 0-d target; target class indices or (N, V) probabilities;
    gradients for input, linear_weight and linear_bias (whichever require grad).
    """
    _check_no_grad(target=target, weight=weight)
    needs = wanted_gradients(input, linear_weight, linear_bias)
    options = dict(reduction=reduction, ignore_index=ignore_index,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   return_lse=return_lse, needs=needs)
    weight = weight.contiguous() if weight is not None else None
    if reduction == "none" and any(needs):
        return _PerTokenLinearCrossEntropy.apply(input, linear_weight, linear_bias, target, weight,
                                                 options)
    return precomputed_gradient(functools.partial(_precomputed, options), input,
                                     linear_weight, linear_bias, target, weight)


KERNELS = {"linear_cross_entropy": linear_cross_entropy}
