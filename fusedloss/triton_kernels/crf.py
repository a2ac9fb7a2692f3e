"""Linear-chain CRF kernels: the negative log-likelihood with its gradients (forward-backward),
the per-position tag marginals with their gradient, and Viterbi decoding.

Shapes are batch-first: emissions (B, T, K), tags (B, T), transitions[i, j] scores tag i -> tag
j, start/end transitions (K,). The mask is applied step by step, as pytorch-crf applies it: a
step whose mask is off leaves the recursion's state as it was (any mask with the first step on,
not only prefixes); the gold score adds transitions[tags[t-1], tags[t]] + emissions[t, tags[t]]
at each step t that is on, and end_transitions[tags[L-1]] with L the mask's row sum. Each program
stops after its sequence's last step that is on (`last`, found on the device).

Algorithm (the wavefront of docs/design.md: one program per sequence, the time loop inside the kernel).
The (K, K) transition matrix and the K-vector of log-scores live in registers, padded to
BLOCK_K = next_pow2(K) with -inf, so a time step is one (BLOCK_K x BLOCK_K) tile op:

  alpha sweep   alpha_0 = start + emit_0,
                alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + trans[i, j] + emit_t[j])   (t on),
                log Z = logsumexp_j(alpha_last[j] + end[j]).
                Two rewritings keep fp32 accurate (the plain recursion carries log-scores that
                grow like T x the scores, and log Z - score(gold) or alpha + beta - log Z then
                cancel most of their digits):
                - for the NLL every term is shifted by the gold path's own term before it is
                  added (trans[i, j] - trans[g_{t-1}, g_t], emit_t[j] - emit_t[g_t], ...), so the
                  recursion yields log Z - score(g) itself and, for a prefix mask, the gold entry
                  is an exact 0 + 0: a loss far smaller than the path scores keeps its accuracy;
                - each step is normalised: a_t = alpha_t - c_t with c_t = max_j (the scaled
                  forward algorithm of HMMs, in log space), and the result is sum_t c_t plus the
                  last logsumexp.
  beta sweep    only when a gradient or the marginals are wanted. The alpha sweep stores a_t in
                a (B, T, K) work buffer and c_t in a (B, T) one; then t runs from `last` down with
                the same normalisers, b_last = end - c_end and
                b_{t-1}[i] = logsumexp_j(trans[i, j] + emit_t[j] + b_t[j]) - c_t   (t on),
                (shifted like alpha for the NLL), so that the marginal is p_t = exp(a_t + b_t)
                with both terms of local size. p_t overwrites a_t in place: the marginals, or
                for the NLL the emission gradient p_t - onehot(g_t). The transition gradient sums
                the pairwise marginals xi_t[i, j] = exp(a_{t-1}[i] + trans[i, j] + emit_t[j] +
                b_t[j] - c_t) minus the observed transition counts in a register tile, stored
                per sequence into a (B, K, K) buffer that torch sums over B (deterministic, no
                atomics); the end transitions' gradient, P(last tag = j) - onehot(tags[L-1]),
                into a (B, K) one.
  tangent       the marginals' backward. p = d log Z / d emit, so the gradient of <g, p> is the
                log-partition's Hessian times g: Cov(G, feature) with G(y) = sum_t g_t[y_t]. The
                alpha sweep also carries A_t[j] = E[g_0 + ... + g_t | y_t = j] (forward
                posterior weights, softmax over i of the alpha step), the beta sweep
                B_t[i] = E[g_{t+1} + ... | y_t = i]; then with E[G] = sum_j p_last[j] A_last[j]
                d/d emit_t[i] = p_t[i] (A_t[i] + B_t[i] - E[G]) and
                d/d trans[i, j] = sum_t xi_t[i, j] (A_{t-1}[i] + g_t[j] + B_t[j] - E[G]).
  Viterbi       the alpha sweep with max for logsumexp and no rewriting (max-plus is exact up
                to one rounding per addition, in the reference's order); backpointers (the
                lowest maximising tag, as torch.max and pytorch-crf break ties) go to a
                (B, T, K) int32 buffer, and the same program backtracks from the best last tag
                through the backpointers of steps L-1 .. 1 (pytorch-crf's walk), writing -1 past L.

The gradients w.r.t. start are row 0 of the emission gradient (start[j] enters a path's score
exactly when emit_0[j] does). The backward scales the buffers by grad_output (a scalar, or per
sequence for reduction='none'), on the device: grad_output is never read on the host.

Accumulation is fp32 (fp64 for fp64 inputs); every load is cast right after it (the interpreter
keeps bf16 as raw bits). Gradients stay in the accumulation dtype until the backward has scaled
them, so 16-bit inputs see one rounding.

Limits: the register tiles hold K up to MAX_TAGS = 128 (two K x K tiles per program: at K = 128,
32 warps keep 16 elements of each per thread; compiled for sm_90, the gradient variant spills
about 0.5 KB per thread there and nothing at K <= 64). Above that the kernels decline the call
(KernelDeclined) and the dispatcher runs the reference. crf_marginals is once-differentiable;
crf_decode's outputs are not differentiable.
"""
import dataclasses
import functools

import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import accumulation_dtype, triton_accumulation
from ._declined import KernelDeclined
from ._math import logsumexp, subtract_max
from .._autocast import loss_dtype
from ._precomputed_gradient import scale_gradient, wanted_gradients

# Largest tag count whose (K, K) tiles fit the registers of one program.
MAX_TAGS = 128


def _tag_block(num_tags):
    return triton.next_power_of_2(max(num_tags, 1))


def _tag_warps(block_k):
    """About 16 elements of each (BLOCK_K, BLOCK_K) tile per thread (8 warps at K = 64, 32 at
    128): the gradient sweep holds two tiles and their temporaries without spilling."""
    return max(1, min(32, block_k * block_k // 512))


@triton.jit
def _softmax_weights(scores, lse, AXIS: tl.constexpr):
    """exp(scores - lse) along AXIS (lse = logsumexp(scores, AXIS)); 0 where a score is -inf, so
    an all -inf line (padding, an unreachable tag) weighs nothing instead of NaN."""
    return tl.where(scores == float("-inf"), 0.0, tl.exp(scores - tl.expand_dims(lse, AXIS)))


@triton.jit
def _crf_forward_backward_kernel(
    emissions_ptr, stride_eb, stride_et, stride_ek,
    tags_ptr, stride_gb, stride_gt,  # gold tags in [0, K), read when HAS_TAGS
    end_tags_ptr,  # (B,) int64: tags[b, L-1], whose end transition the gold score takes
    transitions_ptr, stride_ti, stride_tj,
    start_ptr, stride_s, end_ptr, stride_e,
    mask_ptr, stride_mb, stride_mt,  # (B, T) uint8, 0 where a step is off (strides 0: all on)
    last_ptr,  # (B,) int64: each sequence's last step that is on
    tangent_ptr, stride_ub, stride_ut, stride_uk,  # (B, T, K) g, the marginals' grad_output
    out_ptr,  # (B,): the NLL when HAS_TAGS, else log Z
    work_ptr,  # (B, T, K) contiguous: a_t, then p_t (- onehot(g_t)) or the tangent gradient
    shift_ptr,  # (B, T) contiguous: the per-step normalisers c_t (0 where the step is off)
    carry_ptr,  # (B, T, K) contiguous: the forward expectations A_t, when TANGENT
    trans_grad_ptr,  # (B, K, K) contiguous: per-sequence transition gradient, when TRANS_GRAD
    end_grad_ptr,  # (B, K) contiguous: per-sequence end-transition gradient, when BACKWARD_SWEEP
    num_steps, num_tags,
    ACC: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_TAGS: tl.constexpr,  # NLL (gold-relative log-scores) rather than log Z / marginals
    BACKWARD_SWEEP: tl.constexpr,  # run the beta sweep and fill the work buffer
    TRANS_GRAD: tl.constexpr,  # accumulate the transition gradient (needs BACKWARD_SWEEP)
    TANGENT: tl.constexpr,  # the marginals' backward (module header; needs BACKWARD_SWEEP)
):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    valid = k < num_tags
    rows = k[:, None]  # from-tag i
    cols = k[None, :]  # to-tag j
    trans = tl.load(transitions_ptr + rows * stride_ti + cols * stride_tj,
                    mask=(rows < num_tags) & (cols < num_tags), other=float("-inf")).to(ACC)
    last = tl.load(last_ptr + b)
    emit_row = emissions_ptr + b * stride_eb
    tags_row = tags_ptr + b * stride_gb
    mask_row = mask_ptr + b * stride_mb
    tangent_row = tangent_ptr + b * stride_ub
    work_row = work_ptr + b * num_steps * num_tags
    carry_row = carry_ptr + b * num_steps * num_tags
    shift_row = shift_ptr + b * num_steps

    # alpha sweep on a_t = alpha_t - (c_0 + ... + c_t), log-sum of the normalisers in total
    alpha = (tl.load(start_ptr + k * stride_s, mask=valid, other=float("-inf")).to(ACC)
             + tl.load(emit_row + k * stride_ek, mask=valid, other=float("-inf")).to(ACC))
    if HAS_TAGS:
        gold = tl.load(tags_row).to(tl.int32)
        alpha -= (tl.load(start_ptr + gold * stride_s).to(ACC)
                  + tl.load(emit_row + gold * stride_ek).to(ACC))
    alpha, total = subtract_max(alpha)
    if TANGENT:
        carry = tl.load(tangent_row + k * stride_uk, mask=valid, other=0.0).to(ACC)
        tl.store(carry_row + k, carry, mask=valid)
    if BACKWARD_SWEEP:
        tl.store(work_row + k, alpha, mask=valid)
    for t in range(1, last + 1):
        on = tl.load(mask_row + t * stride_mt) != 0
        emit_t = emit_row + tl.cast(t, tl.int64) * stride_et
        emit = tl.load(emit_t + k * stride_ek, mask=valid, other=float("-inf")).to(ACC)
        if HAS_TAGS:
            next_gold = tl.load(tags_row + t * stride_gt).to(tl.int32)
            trans_gold = tl.load(transitions_ptr + gold * stride_ti + next_gold * stride_tj).to(ACC)
            emit_gold = tl.load(emit_t + next_gold * stride_ek).to(ACC)
            # subtract before adding up: on a gold path the entry is then exactly alpha[gold]
            step = alpha[:, None] + (trans - trans_gold) + (emit - emit_gold)[None, :]
            gold = next_gold
        else:
            step = alpha[:, None] + trans + emit[None, :]
        column = logsumexp(step, 0)
        if TANGENT:
            g = tl.load(tangent_row + t * stride_ut + k * stride_uk, mask=valid, other=0.0).to(ACC)
            moved = g + tl.sum(_softmax_weights(step, column, 0) * carry[:, None], axis=0)
            carry = tl.where(on, moved, carry)
            tl.store(carry_row + t * num_tags + k, carry, mask=valid)
        moved, c = subtract_max(column)
        alpha = tl.where(on, moved, alpha)  # a step that is off leaves the state as it was
        c = tl.where(on, c, 0.0)
        total += c
        if BACKWARD_SWEEP:
            tl.store(work_row + t * num_tags + k, alpha, mask=valid)
            tl.store(shift_row + t, c)
    end = tl.load(end_ptr + k * stride_e, mask=valid, other=float("-inf")).to(ACC)
    if HAS_TAGS:
        end -= tl.load(end_ptr + tl.load(end_tags_ptr + b) * stride_e).to(ACC)
    c_end = logsumexp(alpha + end, 0)
    tl.store(out_ptr + b, total + c_end)  # the NLL (HAS_TAGS) or log Z

    if BACKWARD_SWEEP:
        # b_t = beta_t - (log Z - c_0 - ... - c_t) uses the same normalisers, so
        # p_t = exp(a_t + b_t) with both terms of local size: no cancellation of large sums
        tl.debug_barrier()  # the a_t and c_t stored above are read back by other threads
        beta = end - c_end
        p_last = tl.exp(alpha + beta)  # P(the last tag that is on = j)
        if TANGENT:
            expected = tl.sum(p_last * carry, axis=0)  # E[G]
            tl.store(end_grad_ptr + b * num_tags + k, p_last * (carry - expected), mask=valid)
            later = tl.zeros((BLOCK_K,), dtype=ACC)  # B_t
        else:
            end_tag = tl.load(end_tags_ptr + b)
            tl.store(end_grad_ptr + b * num_tags + k, p_last - (k == end_tag).to(ACC), mask=valid)
        if TRANS_GRAD:
            trans_acc = tl.zeros((BLOCK_K, BLOCK_K), dtype=ACC)
        for s in range(0, last):
            t = last - s
            on = tl.load(mask_row + t * stride_mt) != 0
            p = tl.exp(alpha + beta)
            if TANGENT:
                p *= carry + later - expected
            if HAS_TAGS:
                p -= (k == gold).to(ACC)
            tl.store(work_row + t * num_tags + k, tl.where(on, p, 0.0), mask=valid)
            emit_t = emit_row + tl.cast(t, tl.int64) * stride_et
            emit = tl.load(emit_t + k * stride_ek, mask=valid, other=float("-inf")).to(ACC)
            prev_alpha = tl.load(work_row + (t - 1) * num_tags + k, mask=valid,
                                 other=float("-inf"))
            c = tl.load(shift_row + t)
            if HAS_TAGS:
                prev_gold = tl.load(tags_row + (t - 1) * stride_gt).to(tl.int32)
                c += (tl.load(transitions_ptr + prev_gold * stride_ti + gold * stride_tj).to(ACC)
                      + tl.load(emit_t + gold * stride_ek).to(ACC))
            # [i, j]: log-score of every path through i at t-1 and j at t, less a_{t-1}[i]
            step = trans + (emit + beta - c)[None, :]
            row = logsumexp(step, 1)
            if TANGENT:
                prev_carry = tl.load(carry_row + (t - 1) * num_tags + k, mask=valid, other=0.0)
                ahead = tl.load(tangent_row + t * stride_ut + k * stride_uk, mask=valid,
                                other=0.0).to(ACC) + later
                if TRANS_GRAD:
                    xi = tl.exp(prev_alpha[:, None] + step)
                    trans_acc += tl.where(on, xi * (prev_carry[:, None] + ahead[None, :] - expected),
                                          0.0)
                moved = tl.sum(_softmax_weights(step, row, 1) * ahead[None, :], axis=1)
                later = tl.where(on, moved, later)
                carry = prev_carry
            elif TRANS_GRAD:
                xi = tl.exp(prev_alpha[:, None] + step)
                trans_acc += tl.where(on, xi - ((rows == prev_gold) & (cols == gold)).to(ACC), 0.0)
            beta = tl.where(on, row, beta)
            alpha = prev_alpha
            if HAS_TAGS:
                gold = prev_gold
            tl.debug_barrier()  # the next step overwrites the a_{t-1} just read
        p = tl.exp(alpha + beta)
        if TANGENT:
            p *= carry + later - expected
        if HAS_TAGS:
            p -= (k == gold).to(ACC)
        tl.store(work_row + k, p, mask=valid)
        for t in range(last + 1, num_steps):
            tl.store(work_row + t * num_tags + k, tl.zeros((BLOCK_K,), dtype=ACC), mask=valid)
        if TRANS_GRAD:
            tl.store(trans_grad_ptr + b * num_tags * num_tags + rows * num_tags + cols, trans_acc,
                     mask=(rows < num_tags) & (cols < num_tags))


@triton.jit
def _crf_viterbi_kernel(
    emissions_ptr, stride_eb, stride_et, stride_ek,
    transitions_ptr, stride_ti, stride_tj,
    start_ptr, stride_s, end_ptr, stride_e,
    mask_ptr, stride_mb, stride_mt,  # (B, T) uint8, 0 where a step is off (strides 0: all on)
    last_ptr,  # (B,) int64: each sequence's last step that is on
    lengths_ptr,  # (B,) int64: the mask's row sums L, >= 1
    score_ptr,  # (B,) best path score
    backpointer_ptr,  # (B, T, K) int32 contiguous scratch: best previous tag per (t >= 1, tag)
    best_tags_ptr,  # (B, T) int64 contiguous: the best path, -1 past L
    num_steps, num_tags,
    ACC: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    valid = k < num_tags
    rows = k[:, None]
    cols = k[None, :]
    trans = tl.load(transitions_ptr + rows * stride_ti + cols * stride_tj,
                    mask=(rows < num_tags) & (cols < num_tags), other=float("-inf")).to(ACC)
    last = tl.load(last_ptr + b)
    length = tl.load(lengths_ptr + b)
    emit_row = emissions_ptr + b * stride_eb
    mask_row = mask_ptr + b * stride_mb
    pointer_row = backpointer_ptr + b * num_steps * num_tags
    tags_row = best_tags_ptr + b * num_steps

    score = (tl.load(start_ptr + k * stride_s, mask=valid, other=float("-inf")).to(ACC)
             + tl.load(emit_row + k * stride_ek, mask=valid, other=float("-inf")).to(ACC))
    for t in range(1, last + 1):
        on = tl.load(mask_row + t * stride_mt) != 0
        emit = tl.load(emit_row + tl.cast(t, tl.int64) * stride_et + k * stride_ek, mask=valid,
                       other=float("-inf")).to(ACC)
        step = score[:, None] + trans + emit[None, :]  # the reference's order of additions
        best = tl.max(step, axis=0)
        # lowest maximising from-tag (padding rows are -inf, so a real row ties first)
        previous = tl.min(tl.where(step == best[None, :], rows, BLOCK_K), axis=0)
        tl.store(pointer_row + t * num_tags + k, previous, mask=valid)
        score = tl.where(on, best, score)
    final = score + tl.load(end_ptr + k * stride_e, mask=valid, other=float("-inf")).to(ACC)
    best = tl.max(final, axis=0)
    tl.store(score_ptr + b, best)
    tag = tl.min(tl.where(final == best, k, BLOCK_K), axis=0)

    tl.debug_barrier()  # the backpointers stored above are read back by other threads
    tl.store(tags_row + length - 1, tag.to(tl.int64))
    for s in range(0, length - 1):
        t = length - 1 - s
        tag = tl.load(pointer_row + t * num_tags + tag)
        tl.store(tags_row + t - 1, tag.to(tl.int64))
    for t in range(length, num_steps):
        tl.store(tags_row + t, -1)


# --- launchers -----------------------------------------------------------------------------

def _check_tag_count(num_tags):
    if num_tags > MAX_TAGS:
        raise KernelDeclined(f"{num_tags} tags exceed the kernels' register tiles ({MAX_TAGS})")


def _result_dtype(*tensors):
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors])


@dataclasses.dataclass
class _Steps:
    """Which steps of each sequence are on, as the kernels read them (all on device, no sync)."""
    mask: torch.Tensor  # (B, T) uint8; strides 0 when every step is on
    last: torch.Tensor  # (B,) int64: the last step that is on
    lengths: torch.Tensor  # (B,) int64: the number of steps that are on, L

    @classmethod
    def of(cls, emissions, mask):
        batch, num_steps = emissions.shape[:2]
        device = emissions.device
        if mask is None:
            full = torch.full((batch,), num_steps, dtype=torch.int64, device=device)
            return cls(torch.ones((1, 1), dtype=torch.uint8, device=device).expand(batch, num_steps),
                       full - 1, full)
        positions = torch.arange(num_steps, device=device)
        return cls(mask.view(torch.uint8), torch.where(mask, positions, 0).amax(1),
                   mask.sum(1, dtype=torch.int64))

    def end_tags(self, tags):
        """tags[b, L-1]: the tag whose end transition pytorch-crf's gold score takes."""
        return tags.gather(1, (self.lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)


def _forward_backward(emissions, tags, transitions, start, end, steps, acc, sweep, trans_grad,
                      tangent=None):
    """Launch the forward-backward kernel: (per-sequence NLL or log Z, work buffer, (B, K, K)
    transition buffer, (B, K) end-transition buffer)."""
    batch, num_steps, num_tags = emissions.shape
    device = emissions.device
    out = torch.empty(batch, dtype=acc, device=device)

    def buffer(wanted, *shape):
        return torch.empty(shape if wanted else (0,), dtype=acc, device=device)

    work, shifts = buffer(sweep, batch, num_steps, num_tags), buffer(sweep, batch, num_steps)
    carry = buffer(tangent is not None, batch, num_steps, num_tags)
    trans_work = buffer(trans_grad, batch, num_tags, num_tags)
    end_work = buffer(sweep, batch, num_tags)
    if batch > 0:
        block_k = _tag_block(num_tags)
        has_tags = tags is not None
        _crf_forward_backward_kernel[(batch,)](
            emissions, *emissions.stride(),
            tags if has_tags else steps.lengths, *(tags.stride() if has_tags else (0, 0)),
            steps.end_tags(tags) if has_tags else steps.lengths,
            transitions, *transitions.stride(),
            start, start.stride(0), end, end.stride(0),
            steps.mask, *steps.mask.stride(), steps.last,
            *((tangent, *tangent.stride()) if tangent is not None else (emissions, 0, 0, 0)),
            out, *[x if x.numel() else out for x in (work, shifts, carry, trans_work, end_work)],
            num_steps, num_tags,
            ACC=triton_accumulation(acc), BLOCK_K=block_k,
            HAS_TAGS=has_tags, BACKWARD_SWEEP=sweep, TRANS_GRAD=trans_grad,
            TANGENT=tangent is not None,
            num_warps=_tag_warps(block_k),
        )
    return out, work, trans_work, end_work


def _parameter_gradients(buffers, scale, needs, dtypes):
    """The wanted (emissions, transitions, start, end) gradients from the kernel's per-sequence
    buffers (work, transitions, end), each sequence's scaled by its factor in `scale` (B,), the
    parameters' summed over the batch, cast to each input's dtype (None where not wanted)."""
    work, trans_work, end_work = buffers
    row, tile = scale[:, None], scale[:, None, None]  # against (B, K) and (B, T, K) / (B, K, K)
    grads = (lambda dtype: scale_gradient(work, tile, dtype),
             lambda dtype: (trans_work * tile).sum(0).to(dtype),
             lambda dtype: (work[:, 0] * row).sum(0).to(dtype),
             lambda dtype: (end_work * row).sum(0).to(dtype))
    return [grad(dtype) if need else None for grad, need, dtype in zip(grads, needs, dtypes)]


class _CRFNLL(torch.autograd.Function):
    """The forward writes d(NLL_b)/d(emissions) and per-sequence parameter gradients; the
    backward scales them by grad_output and sums over the batch."""

    @staticmethod
    def forward(ctx, emissions, tags, transitions, start, end, steps, reduction, needs):
        dtype = _result_dtype(emissions, transitions, start, end)
        acc = accumulation_dtype(dtype)
        nll, work, trans_work, end_work = _forward_backward(
            emissions, tags, transitions, start, end, steps, acc, sweep=any(needs),
            trans_grad=needs[1])
        ctx.save_for_backward(work, trans_work, end_work)
        ctx.reduction, ctx.needs, ctx.acc, ctx.batch = reduction, needs, acc, emissions.shape[0]
        ctx.dtypes = (emissions.dtype, transitions.dtype, start.dtype, end.dtype)
        return reduce(nll, reduction).to(loss_dtype(dtype, nll.device))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        # per-sequence factor d(loss)/d(NLL_b), on the device
        scale = grad_output.to(ctx.acc).expand(ctx.batch)
        if ctx.reduction == "mean":
            scale = scale / ctx.batch
        emissions, transitions, start, end = _parameter_gradients(ctx.saved_tensors, scale,
                                                                  ctx.needs, ctx.dtypes)
        return emissions, None, transitions, start, end, None, None, None


class _CRFMarginals(torch.autograd.Function):
    """Forward: the forward-backward kernel. Backward: the same kernel's tangent sweeps."""

    @staticmethod
    def forward(ctx, emissions, transitions, start, end, steps):
        dtype = _result_dtype(emissions, transitions, start, end)
        acc = accumulation_dtype(dtype)
        _, marginals, _, _ = _forward_backward(emissions, None, transitions, start, end, steps,
                                               acc, sweep=True, trans_grad=False)
        ctx.save_for_backward(emissions, transitions, start, end)
        ctx.steps, ctx.acc = steps, acc
        return marginals.to(loss_dtype(dtype, marginals.device))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        emissions, transitions, start, end = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        _, *buffers = _forward_backward(emissions, None, transitions, start, end, ctx.steps,
                                        ctx.acc, sweep=True, trans_grad=needs[1],
                                        tangent=grad_output)
        ones = torch.ones(emissions.shape[0], dtype=ctx.acc, device=emissions.device)
        dtypes = [x.dtype for x in (emissions, transitions, start, end)]
        return (*_parameter_gradients(buffers, ones, needs, dtypes), None)


def crf_nll(emissions, tags, transitions, start_transitions, end_transitions, mask=None,
            reduction="mean"):
    _check_tag_count(emissions.shape[2])
    needs = wanted_gradients(emissions, transitions, start_transitions, end_transitions)
    return _CRFNLL.apply(emissions, tags, transitions, start_transitions, end_transitions,
                         _Steps.of(emissions, mask), reduction, needs)


def crf_marginals(emissions, transitions, start_transitions, end_transitions, mask=None):
    _check_tag_count(emissions.shape[2])
    return _CRFMarginals.apply(emissions, transitions, start_transitions, end_transitions,
                               _Steps.of(emissions, mask))


def crf_decode(emissions, transitions, start_transitions, end_transitions, mask=None):
    batch, num_steps, num_tags = emissions.shape
    _check_tag_count(num_tags)
    dtype = _result_dtype(emissions, transitions, start_transitions, end_transitions)
    acc = accumulation_dtype(dtype)
    device = emissions.device
    scores = torch.empty(batch, dtype=acc, device=device)
    best_tags = torch.empty((batch, num_steps), dtype=torch.int64, device=device)
    if batch > 0:
        block_k = _tag_block(num_tags)
        steps = _Steps.of(emissions, mask)
        backpointers = torch.empty((batch, num_steps, num_tags), dtype=torch.int32, device=device)
        _crf_viterbi_kernel[(batch,)](
            emissions, *emissions.stride(), transitions, *transitions.stride(),
            start_transitions, start_transitions.stride(0),
            end_transitions, end_transitions.stride(0),
            steps.mask, *steps.mask.stride(), steps.last, steps.lengths,
            scores, backpointers, best_tags,
            num_steps, num_tags,
            ACC=triton_accumulation(acc), BLOCK_K=block_k, num_warps=_tag_warps(block_k),
        )
    return scores.to(loss_dtype(dtype, scores.device)), best_tags


KERNELS = {
    "crf_nll": crf_nll,
    "crf_decode": crf_decode,
    "crf_marginals": crf_marginals,
}
