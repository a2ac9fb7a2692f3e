"""Linear + cross entropy: the loss of the logits X @ W^T + b without ever holding the (N, V)
logits, forward and backward fused per chunk of tokens.

Algorithm (chunks of R tokens; the matmuls are cuBLAS, the softmax part is the fused
cross-entropy row kernel of cross_entropy.py):
  for each chunk X_c of R rows (R from `chunk_rows`: chunk logits about the size of X):
    1. logits_c = X_c @ W^T (+ b) into an (R, V) buffer reused by every chunk, in fp32 for
       16-bit inputs (cuBLAS reads 16-bit operands and writes fp32): logits rounded to 16 bits
       lose more than the tolerance allows (a logit of 8 is off by 0.03 in bf16);
    2. the row kernel reads logits_c and writes the per-token loss (and lse) and, when gradients
       are wanted, d loss / d logits_c in the same sweep, already divided by the 'mean'
       denominator (the kept targets' summed weights, or N for soft labels; on the device). The
       gradient overwrites logits_c in place, or for 16-bit inputs goes to an (R, V) 16-bit
       buffer, the tensor-core operand of step 3;
    3. grad_X_c = dlogits_c @ W into grad_X's rows; grad_W += dlogits_c^T @ X_c and
       grad_b += the column sums of dlogits_c. For 16-bit inputs the three are fp32: grad_W's
       running sum across chunks would drift in 16 bits, and every gradient is rounded to 16
       bits once, after the grad_output scaling. Each product runs only for a tensor that
       requires grad.
  reduction 'mean' / 'sum': steps 1-3 all run in the forward (one sweep over the chunks); the
    backward only scales the three gradients by the scalar grad_output, on the device.
  reduction 'none': the per-token grad_output is unknown in the forward, so the forward runs
    steps 1-2 for the losses alone and the backward recomputes steps 1-3 with grad_output folded
    into the small operands (rows of X_c and of grad_X_c, the bias's mat-vec), not the chunk.
Kept between forward and backward: the three gradients ('mean'/'sum') or the inputs ('none').
Recomputed: nothing for 'mean'/'sum'; the logits (one more X @ W^T) for 'none'.
Peak extra memory: the R x V chunk (fp32 for 16-bit inputs, plus its 16-bit gradient) + the
gradient buffers grad_X (N x H), grad_W (V x H), grad_b (V), fp32 for 16-bit inputs, else the
input dtype + O(N) per-token values. Deterministic: no atomics, a fixed chunk order.

Soft (probability) targets take the same path: the row kernel reads each chunk's rows of the
(N, V) target through its strides.
"""
import functools

import torch
import triton

from .._reduction import reduce
from ._common import GPU_LAUNCH_PARAMS, accumulation_dtype
from .._autocast import loss_dtype
from ._precomputed_gradient import PrecomputedGradient, Sweep, wanted_gradients
from .cross_entropy import _check_no_grad, _hard_denominator, launch_row_kernel

# Fewest rows per chunk on a GPU. A chunk's rows are the inner dimension of
# grad_W += dlogits_c^T @ X_c, which reads and writes the whole fp32 (V, H) accumulator once per
# chunk: below ~1024 rows that traffic, not the arithmetic, bounds the product on an H100.
MIN_CHUNK_ROWS = 1024 if GPU_LAUNCH_PARAMS else 1


def chunk_rows(num_rows, num_classes, features):
    """Rows per chunk: N / ceil(V / H) rounded up to a power of two, so the chunk's logits are
    about the size of X (at most twice), then at least MIN_CHUNK_ROWS and at most N."""
    rows = triton.next_power_of_2(triton.cdiv(num_rows, triton.cdiv(num_classes, max(features, 1))))
    return max(1, min(num_rows, max(rows, MIN_CHUNK_ROWS)))


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


def _score_chunk(logits, grad, target, class_weight, loss, lse, denominator, options):
    """Step 2: the cross-entropy row kernel on one chunk of logits; it writes d loss / d logits
    into `grad` (None: no gradient wanted), which may be the logits' own storage. target: the
    chunk's class indices, or its (rows, V) probabilities."""
    soft = target.is_floating_point()
    launch_row_kernel(logits.unsqueeze(-1), target.unsqueeze(-1) if soft else target, class_weight,
                      None if grad is None else grad.unsqueeze(-1), loss, lse, denominator,
                      soft=soft, focal=False, ignore_index=options["ignore_index"],
                      label_smoothing=options["label_smoothing"], z_loss=options["z_loss"],
                      softcap=options["softcap"])


def _sweep(x, linear_weight, linear_bias, target, class_weight, options, loss, lse=None,
           denominator=None, grads=(None, None, None), token_scale=None):
    """Steps 1-3 over every chunk of the (N, H) rows x.

    loss (and lse) receive per-token values; grads are the (grad_x, grad_w, grad_b) buffers to
    fill, None for those not wanted; token_scale, (N,) or None, is the per-token grad_output.
    """
    grad_x, grad_w, grad_b = grads
    compute_grad = any(g is not None for g in grads)
    num_rows, num_classes = x.shape[0], linear_weight.shape[0]
    rows = chunk_rows(num_rows, num_classes, x.shape[1])
    acc = accumulation_dtype(x.dtype)
    logits_buffer = torch.empty((min(rows, num_rows), num_classes), dtype=acc, device=x.device)
    grad_buffer = None
    if compute_grad:  # in place, except for 16-bit inputs: step 3 multiplies 16-bit operands
        grad_buffer = (logits_buffer if acc == x.dtype
                       else torch.empty_like(logits_buffer, dtype=x.dtype))
    weight_t = linear_weight.t()
    for start in range(0, num_rows, rows):
        stop = min(start + rows, num_rows)
        x_c, logits = x[start:stop], logits_buffer[:stop - start]
        _matmul_into(logits, x_c, weight_t, linear_bias)
        dlogits = grad_buffer[:stop - start] if compute_grad else None
        _score_chunk(logits, dlogits, target[start:stop], class_weight, loss[start:stop],
                     lse[start:stop] if lse is not None else None, denominator, options)
        if not compute_grad:
            continue
        scale = token_scale[start:stop, None] if token_scale is not None else None
        if grad_x is not None:
            _matmul_into(grad_x[start:stop], dlogits, linear_weight)
            if scale is not None:
                grad_x[start:stop].mul_(scale)
        if grad_w is not None:
            x_scaled = x_c if scale is None else (x_c * scale).to(x_c.dtype)
            _matmul_into(grad_w, dlogits.t(), x_scaled, grad_w)
        if grad_b is not None:
            if scale is None:
                grad_b += dlogits.sum(0, dtype=grad_b.dtype)
            else:
                column = grad_b[:, None]
                _matmul_into(column, dlogits.t(), scale.to(x_c.dtype), column)


def _gradient_buffers(x, linear_weight, linear_bias, needs):
    """(grad_x, grad_w, grad_b) in fp32 for 16-bit inputs (each rounded once, after the
    backward's scaling): grad_x filled chunk by chunk, the others accumulated from zero; None
    where no gradient is wanted."""
    need_x, need_w, need_b = needs
    acc = accumulation_dtype(x.dtype)
    return (torch.empty(x.shape, dtype=acc, device=x.device) if need_x else None,
            torch.zeros(linear_weight.shape, dtype=acc, device=x.device) if need_w else None,
            torch.zeros(linear_bias.shape, dtype=acc, device=x.device) if need_b else None)


def _flat_target(target):
    """Per token: a row of probabilities (read through its strides) or one class index."""
    if target.is_floating_point():
        return target.reshape(-1, target.shape[-1])
    return target.reshape(-1).contiguous()


def _forward(input, linear_weight, linear_bias, target, class_weight, options, grads):
    """Steps 1-3 over every chunk, filling the `grads` buffers (None where not wanted): the
    reduced loss, and the per-token lse when asked for."""
    x = input.reshape(-1, input.shape[-1])  # an (H,) input is one row
    acc = accumulation_dtype(input.dtype)
    reduction = options["reduction"]
    flat_target = _flat_target(target)
    loss = torch.empty(x.shape[0], dtype=acc, device=x.device)
    lse = torch.empty_like(loss) if options["return_lse"] else None
    denominator = None
    if reduction == "mean" and target.is_floating_point():
        denominator = torch.full((), x.shape[0], dtype=acc, device=x.device)
    elif reduction == "mean":
        denominator = _hard_denominator(flat_target, class_weight, options["ignore_index"], acc)
    _sweep(x, linear_weight, linear_bias, flat_target, class_weight, options, loss, lse,
           denominator, grads)
    token_shape = input.shape[:-1]
    reduced = reduce(loss.view(token_shape), reduction, denominator).to(
        loss_dtype(input.dtype, input.device))
    return (reduced,) if lse is None else (reduced, lse.view(token_shape))


def _rounded(grad, like):
    """A gradient buffer (fp32 for 16-bit inputs) rounded once to its input's dtype and shape."""
    return grad.to(like.dtype).view(like.shape)


def _precomputed(options, input, linear_weight, linear_bias, target, class_weight):
    """'mean' and 'sum' (or no gradient at all): one sweep writes the three gradients, which
    the backward scales in place by the scalar grad_output."""
    x = input.reshape(-1, input.shape[-1])
    wanted = any(options["needs"])
    grads = (_gradient_buffers(x, linear_weight, linear_bias, options["needs"]) if wanted
             else (None, None, None))
    outputs = _forward(input, linear_weight, linear_bias, target, class_weight, options, grads)
    inputs = (input, linear_weight, linear_bias)
    return Sweep(outputs, [*grads, None, None], finish=lambda i, grad: _rounded(grad, inputs[i]))


class _PerTokenLinearCrossEntropy(torch.autograd.Function):
    """reduction='none' with gradients: the per-token grad_output is unknown in the forward, so
    the forward computes the losses alone and the backward recomputes steps 1-3 with it folded
    in (module header)."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, class_weight, options):
        outputs = _forward(input, linear_weight, linear_bias, target, class_weight, options,
                           (None, None, None))
        ctx.options = options
        ctx.save_for_backward(input, linear_weight, linear_bias, _flat_target(target), class_weight)
        if len(outputs) == 1:
            return outputs[0]
        ctx.mark_non_differentiable(outputs[1])
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output, *unused_lse_grad):
        input, linear_weight, linear_bias, flat_target, class_weight = ctx.saved_tensors
        x = input.reshape(-1, input.shape[-1])
        grads = _gradient_buffers(x, linear_weight, linear_bias, ctx.options["needs"])
        scratch_loss = torch.empty(x.shape[0], dtype=accumulation_dtype(x.dtype), device=x.device)
        token_scale = grad_output.reshape(-1).to(scratch_loss.dtype)
        _sweep(x, linear_weight, linear_bias, flat_target, class_weight, ctx.options,
               scratch_loss, grads=grads, token_scale=token_scale)
        inputs = (input, linear_weight, linear_bias)
        return (*[None if g is None else _rounded(g, t) for g, t in zip(grads, inputs)],
                None, None, None)


def linear_cross_entropy(input, linear_weight, target, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, return_lse=False):
    """cross_entropy(input @ linear_weight.T + linear_bias, target, ...) without the (N, V)
    logits: chunks of tokens through cuBLAS and the fused cross-entropy kernel (module header).

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
    return PrecomputedGradient.apply(functools.partial(_precomputed, options), input,
                                     linear_weight, linear_bias, target, weight)


KERNELS = {"linear_cross_entropy": linear_cross_entropy}
