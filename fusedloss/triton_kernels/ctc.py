"""CTC loss kernels: `ctc_loss` on log-probabilities and `ctc_loss_with_logits` with the
log-softmax fused in. Forward and gradient run in the forward launch; the backward only scales.

Extended labels. A target l_1..l_L becomes b l_1 b l_2 ... l_L b: 2L+1 states, blanks at even
states, labels at odd ones. An alignment stays, moves one state per frame, or skips the blank
between two different labels.

One program per sequence (a wavefront over its states), the time loop inside the kernel:
  alpha   alpha_t(s) = emit_t(s) + lse(alpha_{t-1}(s), alpha_{t-1}(s-1), alpha_{t-1}(s-2) where
          the skip into s is allowed), in log space; the lse maps all -inf to -inf, never NaN.
          The state vector lives in registers (BLOCK_S = next_pow2(2 S + 1) lanes). The shifted
          reads at s-1 and s-2 go through global memory: each frame stores alpha_t in a
          per-sequence row, a barrier makes it visible to the program's other threads, and the
          next frame loads it shifted. With a gradient to compute, the rows are the whole alpha
          history (N, T, 2S+1), read back by the beta phase; without, two rows alternate.
  scaling Every vector is kept near 0: each frame's emissions are split into values relative
          to their max over the states plus one frame constant, and alpha_t is stored minus its
          max; the constants add up in `log_scale`, and loss = -(log_scale + lse(alpha at the
          last blank and last label)). Differences between states then never round at the scale
          of the loss or of a 1e4 logit (log-space CTC in fp32 otherwise loses ~ulp(loss) in
          every posterior).
  beta    Only with a gradient and a finite loss, back from the last input frame in the same
          program: beta'_t(s) = log P(frames after t | state s at t), excluding frame t's
          emission, rescaled like alpha. The posterior of state s at frame t is
          alpha_t(s) + beta'_t(s) normalised over the states (exactly what dividing by the
          sequence probability gives, since every alignment visits one state per frame).
  gradient  d loss / d log_probs[t, c] = -(sum of the posteriors of the states whose label is c).
          Several states share a class (every blank state, repeated labels) and the sum must be
          deterministic, without atomics: the states are sorted by class once per sequence (a
          stable torch.sort in the launcher, no sync); each frame gathers the posteriors in that
          order, a segmented associative scan sums each run of equal classes, and the last state
          of a run writes its class. A program owns its sequence's gradient rows, so nothing
          else writes there. Cost O(W log W) per frame for any vocabulary, where a one-hot
          (states x classes) reduction would cost O(W C).
Logits. ctc_loss_with_logits first runs `_frame_softmax_kernel`, one program per (t, n) frame:
the frame's max and log-sum-exp (a (T, N, 2) buffer, the only extra memory besides the
gradient) and, with a gradient, softmax(z) into every gradient row inside the input (0 past it).
The CTC program then overwrites the label classes with softmax - posterior sum, the gradient
w.r.t. the logits (the chain rule through log_softmax, the posteriors summing to 1 per frame).
A sequence with no alignment (infinite loss) gets gradient 0: its softmax rows are zeroed.
Reduction ('mean': each loss over max(L, 1), then the batch mean; zero_infinity) runs in torch
on the (N,) per-sequence losses the autograd Function returns, so autograd hands the backward a
per-sequence grad_output: never assumed to be 1, never read on the host.

Host syncs: none. Targets arrive as padded (N, S) rows (functional.py pads concatenated targets
to the longest length, which its one read of the lengths already knows).
"""
import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import accumulation_dtype, round_to, row_block, row_warps, triton_accumulation
from ._math import logsumexp3, subtract_max
from .._autocast import loss_dtype
from ._precomputed_gradient import PrecomputedGradient, Sweep, wanted_gradients


@triton.jit
def _segmented_add(value_a, start_a, value_b, start_b):
    # scan operator of a sum that restarts where a segment starts (start flag 1)
    return tl.where(start_b != 0, value_b, value_a + value_b), start_a | start_b


@triton.jit
def _emissions(x_ptr, frame_offset, label_offsets, valid, stats_ptr, frame,
               ACC: tl.constexpr, LOGITS: tl.constexpr):
    """Each state's log p_t(l'(s)), split into values near 0 and one constant of the frame.

    The split keeps the differences between states exact: with a 1e4 logit elsewhere in the
    frame, z - lse would round every state's emission at the scale of 1e4, the state-relative
    values do not, and the constant only reaches the loss value. For logits,
    log p = z - max(z) - log sum exp(z - max(z)), the frame's statistics.
    """
    # cast right after the load: the interpreter keeps bf16 as raw bits
    emit = tl.load(x_ptr + frame_offset + label_offsets, mask=valid, other=float("-inf")).to(ACC)
    emit, offset = subtract_max(emit)
    if LOGITS:
        offset = (offset - tl.load(stats_ptr + 2 * frame).to(ACC)) \
            - tl.load(stats_ptr + 2 * frame + 1).to(ACC)
    return emit, offset


@triton.jit
def _ctc_kernel(
    x_ptr, x_stride_t, x_stride_n, x_stride_c,  # (T, N, C) log-probabilities, or logits
    stats_ptr,  # (T, N, 2) per frame: max and log sum exp(z - max) of the logits; with LOGITS
    ext_ptr,  # (N, W) extended labels (blank past each sequence's 2L+1 states)
    order_ptr,  # (N, W) states sorted by class, stable; read when COMPUTE_GRAD
    sorted_ptr,  # (N, W) their classes, num_classes past 2L+1 (sorts last); with COMPUTE_GRAD
    input_lengths_ptr, target_lengths_ptr,  # (N,) int64
    alpha_ptr,  # (N, alpha_rows, W) alpha rows: all T with COMPUTE_GRAD, else 2 alternating
    alpha_rows,
    scratch_ptr,  # (N, 2, 2, W) beta_t and posterior rows, alternating by frame parity
    loss_ptr,  # (N,) per-sequence loss, accumulation dtype
    grad_ptr, grad_stride_t, grad_stride_n,  # (T, N, C), class stride 1; with COMPUTE_GRAD
    batch, num_classes, width,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
    LOGITS: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    num_frames = tl.load(input_lengths_ptr + n)
    target_length = tl.load(target_lengths_ptr + n)
    num_states = 2 * target_length + 1
    s = tl.arange(0, BLOCK_S)
    valid = s < num_states
    neg_inf = tl.full([BLOCK_S], float("-inf"), ACC)

    ext_row = ext_ptr + n * width
    labels = tl.load(ext_row + s, mask=valid, other=0)
    # skip s-2 -> s: into a label state whose label differs from the one two states back
    before = tl.load(ext_row + s - 2, mask=valid & (s >= 2), other=0)
    can_skip = (s % 2 == 1) & (s >= 3) & (labels != before)
    label_offsets = labels * x_stride_c
    x_row = x_ptr + n * x_stride_n
    alpha_row = alpha_ptr + n * alpha_rows * width

    # frame 0 starts on the blank or on the first label; no frames leaves all mass on state 0.
    # Each alpha_t is stored minus its max; log_scale sums what was taken out (less each frame's
    # log_sum for logits), so loss = -(log_scale + lse(final states)).
    emit, offset = _emissions(x_row, 0, label_offsets, valid & (s < 2), stats_ptr, n,
                              ACC, LOGITS)
    alpha = tl.where(num_frames > 0, emit, tl.where(s == 0, 0.0, neg_inf))
    log_scale = tl.where(num_frames > 0, offset, 0.0)
    tl.store(alpha_row + s, alpha, mask=valid)
    for t in range(1, num_frames):
        emit, offset = _emissions(x_row, t * x_stride_t, label_offsets, valid, stats_ptr,
                                  t * batch + n, ACC, LOGITS)
        tl.debug_barrier()  # alpha_{t-1} stored by every thread before anyone reads it shifted
        previous = alpha_row + ((t - 1) % alpha_rows) * width + s
        step = tl.load(previous - 1, mask=valid & (s >= 1), other=float("-inf"))
        skip = tl.load(previous - 2, mask=can_skip, other=float("-inf"))
        alpha, shift = subtract_max(tl.where(valid, logsumexp3(alpha, step, skip) + emit, neg_inf))
        log_scale += shift + offset
        tl.store(alpha_row + (t % alpha_rows) * width + s, alpha, mask=valid)

    final = (s == num_states - 1) | (s == num_states - 2)  # last blank, last label
    final_alpha, shift = subtract_max(tl.where(final, alpha, neg_inf))
    loss = -(log_scale + shift + tl.log(tl.sum(tl.exp(final_alpha), axis=0)))
    tl.store(loss_ptr + n, loss)

    if COMPUTE_GRAD:
        grad_seq = grad_ptr + n * grad_stride_n
        if loss == float("inf"):
            if LOGITS:  # no alignment: gradient 0 (the softmax kernel wrote softmax rows)
                for t in range(0, num_frames):
                    for c in range(0, num_classes, BLOCK_C):
                        cols = c + tl.arange(0, BLOCK_C)
                        tl.store(grad_seq + t * grad_stride_t + cols,
                                 tl.zeros([BLOCK_C], ACC).to(grad_ptr.dtype.element_ty),
                                 mask=cols < num_classes)
        else:
            # classes in sorted order, per run of equal classes: where it starts and ends
            order_row = order_ptr + n * width
            sorted_row = sorted_ptr + n * width
            in_width = s < width
            order = tl.load(order_row + s, mask=in_width, other=0)
            classes = tl.load(sorted_row + s, mask=in_width, other=num_classes)
            previous_class = tl.load(sorted_row + s - 1, mask=in_width & (s >= 1), other=-1)
            next_class = tl.load(sorted_row + s + 1, mask=s + 1 < width, other=num_classes)
            is_label = classes < num_classes
            run_start = (classes != previous_class).to(tl.int32)
            run_end = is_label & (classes != next_class)
            # skip s -> s+2 in beta: the skip into s+2 is allowed
            after = tl.load(ext_row + s + 2, mask=s + 2 < num_states, other=0)
            can_skip_next = (s % 2 == 1) & (s + 2 < num_states) & (after != labels)

            tl.debug_barrier()  # the alpha history complete before it is read back
            beta = tl.where(final, 0.0, neg_inf)  # beta'_{T_n-1}: nothing left to emit
            for i in range(0, num_frames):
                t = num_frames - 1 - i
                row = scratch_ptr + (n * 2 + t % 2) * 2 * width  # [beta_t | posterior_t]
                alpha = tl.load(alpha_row + t * width + s, mask=valid, other=float("-inf"))
                # posterior of each state, normalised over the frame (it sums to 1 in exact
                # arithmetic): only O(1) log values meet, whatever the size of the loss
                posterior, _ = subtract_max(alpha + beta)
                posterior = tl.exp(posterior)
                posterior = posterior / tl.sum(posterior, axis=0)
                tl.store(row + width + s, posterior, mask=valid)
                # beta's scale is free (posteriors are normalised per frame): drop the offset
                emit, _ = _emissions(x_row, t * x_stride_t, label_offsets, valid, stats_ptr,
                                     t * batch + n, ACC, LOGITS)
                beta = beta + emit
                tl.store(row + s, beta, mask=valid)
                tl.debug_barrier()  # both rows visible to every thread
                # occupancy per class: runs of equal classes summed by a segmented scan
                occupancy = tl.load(row + width + order, mask=is_label, other=0.0)
                total, _ = tl.associative_scan((occupancy, run_start), 0, _segmented_add)
                grad_row = grad_seq + t * grad_stride_t + classes
                if LOGITS:  # softmax - occupancy
                    z = tl.load(x_row + t * x_stride_t + classes * x_stride_c,
                                mask=run_end, other=0.0).to(ACC)
                    stats = stats_ptr + 2 * (t * batch + n)
                    z = z - tl.load(stats).to(ACC) - tl.load(stats + 1).to(ACC)
                    total = tl.exp(z) - total
                else:
                    total = -total
                tl.store(grad_row, round_to(total, grad_ptr.dtype.element_ty), mask=run_end)
                # beta'_{t-1} from beta_t at s, s+1 and (skip) s+2, rescaled like alpha
                step = tl.load(row + s + 1, mask=s + 1 < num_states, other=float("-inf"))
                skip = tl.load(row + s + 2, mask=can_skip_next, other=float("-inf"))
                beta, _ = subtract_max(tl.where(valid, logsumexp3(beta, step, skip), neg_inf))


@triton.jit
def _frame_softmax_kernel(
    x_ptr, x_stride_t, x_stride_n, x_stride_c,  # (T, N, C) logits
    stats_ptr,  # (T, N, 2) per frame: max (0 if all -inf) and log sum exp(z - max)
    grad_ptr, grad_stride_t, grad_stride_n,  # (T, N, C) class stride 1; with COMPUTE_GRAD
    input_lengths_ptr, batch, num_classes,
    ACC: tl.constexpr, BLOCK: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
):
    frame = tl.program_id(0).to(tl.int64)
    t = frame // batch
    n = frame % batch
    inside = t < tl.load(input_lengths_ptr + n)
    read_limit = tl.where(inside, num_classes, 0)  # frames past the input are never read
    x_row = x_ptr + t * x_stride_t + n * x_stride_n
    cols = tl.arange(0, BLOCK)
    z = tl.load(x_row + cols * x_stride_c, mask=cols < read_limit,
                other=float("-inf")).to(ACC)
    m = tl.max(z, axis=0)
    total = tl.sum(tl.exp(z - tl.where(m == float("-inf"), 0.0, m)), axis=0)
    if not SINGLE_BLOCK:  # online lse over the remaining blocks
        for start in range(BLOCK, num_classes, BLOCK):
            b_cols = start + cols
            b_z = tl.load(x_row + b_cols * x_stride_c, mask=b_cols < read_limit,
                          other=float("-inf")).to(ACC)
            new_m = tl.maximum(m, tl.max(b_z, axis=0))
            shift = tl.where(new_m == float("-inf"), 0.0, new_m)
            total = total * tl.exp(m - shift) + tl.sum(tl.exp(b_z - shift), axis=0)
            m = new_m
    m = tl.where(m == float("-inf"), 0.0, m)
    log_sum = tl.log(total)
    tl.store(stats_ptr + 2 * frame, m)
    tl.store(stats_ptr + 2 * frame + 1, log_sum)
    if COMPUTE_GRAD:
        grad_row = grad_ptr + t * grad_stride_t + n * grad_stride_n
        if SINGLE_BLOCK:
            p = tl.where(inside, tl.exp(z - m - log_sum), 0.0)
            tl.store(grad_row + cols, round_to(p, grad_ptr.dtype.element_ty),
                     mask=cols < num_classes)
        else:
            for start in range(0, num_classes, BLOCK):
                b_cols = start + cols
                b_z = tl.load(x_row + b_cols * x_stride_c, mask=b_cols < read_limit,
                              other=float("-inf")).to(ACC)
                p = tl.where(inside, tl.exp(b_z - m - log_sum), 0.0)
                tl.store(grad_row + b_cols, round_to(p, grad_ptr.dtype.element_ty),
                         mask=b_cols < num_classes)


# --- launchers -----------------------------------------------------------------------------

def _extended_labels(targets, target_lengths, blank):
    """(N, 2S+1): blank at even states, labels at odd ones, blank past each 2L+1."""
    batch, width = targets.shape
    inside = torch.arange(width, device=targets.device) < target_lengths.unsqueeze(1)
    extended = torch.full((batch, 2 * width + 1), blank, dtype=torch.int64, device=targets.device)
    extended[:, 1::2] = torch.where(inside, targets, blank)
    return extended


def _ctc_warps(block_s):
    # barriers and cross-warp reductions every frame: few warps, several states per thread
    return max(1, min(4, block_s // 256))


def _ctc_forward(x, targets, input_lengths, target_lengths, blank, logits, compute_grad):
    """Per-sequence losses (N,) in the accumulation dtype, and d(loss_n)/dx (T, N, C) or None."""
    acc = accumulation_dtype(x.dtype)
    num_frames, batch, num_classes = x.shape
    device = x.device
    extended = _extended_labels(targets, target_lengths, blank)
    width = extended.shape[1]
    block_s = triton.next_power_of_2(width)

    loss = torch.empty(batch, dtype=acc, device=device)
    grad = None
    order = sorted_classes = extended  # read only with a gradient
    scratch = loss
    if compute_grad:
        grad = (torch.empty if logits else torch.zeros)(x.shape, dtype=x.dtype, device=device)
        key = torch.where(torch.arange(width, device=device) < 2 * target_lengths.unsqueeze(1) + 1,
                          extended, num_classes)
        sorted_classes, order = torch.sort(key, dim=1, stable=True)
        scratch = torch.empty(batch, 2, 2, width, dtype=acc, device=device)
    alpha_rows = num_frames if compute_grad else 2
    alpha = torch.empty(batch, alpha_rows, width, dtype=acc, device=device)
    stats = loss
    if logits:
        stats = torch.empty(num_frames, batch, 2, dtype=acc, device=device)
        block = row_block(num_classes)
        _frame_softmax_kernel[(num_frames * batch,)](
            x, *x.stride(), stats, grad if compute_grad else x, num_classes * batch, num_classes,
            input_lengths, batch, num_classes,
            ACC=triton_accumulation(x.dtype), BLOCK=block, SINGLE_BLOCK=num_classes <= block,
            COMPUTE_GRAD=compute_grad, num_warps=row_warps(block))
    _ctc_kernel[(batch,)](
        x, *x.stride(), stats, extended, order, sorted_classes, input_lengths, target_lengths,
        alpha, alpha_rows, scratch, loss,
        grad if compute_grad else x, num_classes * batch, num_classes,
        batch, num_classes, width,
        ACC=triton_accumulation(x.dtype), BLOCK_S=block_s,
        BLOCK_C=min(row_block(num_classes), 1024),  # zeroing an infeasible sequence's rows
        LOGITS=logits, COMPUTE_GRAD=compute_grad, num_warps=_ctc_warps(block_s))
    return loss, grad


def _per_sequence(grad_output):
    """Each sequence's grad_output against its (T, N, C) gradient."""
    return grad_output.view(1, -1, 1)


def _ctc(x, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, logits):
    input_lengths = input_lengths.reshape(-1).contiguous()
    target_lengths = target_lengths.reshape(-1).contiguous()
    (compute_grad,) = wanted_gradients(x)

    def sweep(x):
        """Per-sequence CTC losses (N,) and d(loss_n)/d x; the backward scales each sequence's
        gradient by its grad_output."""
        batched = x if x.dim() == 3 else x.unsqueeze(1)
        # unbatched: the target is one row
        rows = targets if x.dim() == 3 else targets.reshape(1, -1)
        loss, grad = _ctc_forward(batched.detach(), rows, input_lengths, target_lengths, blank,
                                  logits, compute_grad)
        return Sweep((loss,), [None if grad is None else grad.view(batched.shape)],
                     shape_grad_output=_per_sequence, finish=lambda _, g: g.view(x.shape))
    loss = PrecomputedGradient.apply(sweep, x)
    if zero_infinity:
        loss = torch.where(torch.isinf(loss), torch.zeros_like(loss), loss)
    if reduction == "mean":  # torch: each loss over its target length, then the batch mean
        loss = loss / target_lengths.clamp(min=1).to(loss.dtype)
    elif x.dim() == 2:
        loss = loss.squeeze(0)
    return reduce(loss, reduction).to(loss_dtype(x.dtype, x.device))


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
             zero_infinity=False):
    return _ctc(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                zero_infinity, logits=False)


def ctc_loss_with_logits(logits, targets, input_lengths, target_lengths, blank=0,
                         reduction="mean", zero_infinity=False):
    return _ctc(logits, targets, input_lengths, target_lengths, blank, reduction,
                zero_infinity, logits=True)


KERNELS = {"ctc_loss": ctc_loss, "ctc_loss_with_logits": ctc_loss_with_logits}
