"""Linear-chain CRF kernels: the negative log-likelihood with its gradients (forward-backward),
the per-position tag marginals, and Viterbi decoding.

Shapes are batch-first: emissions (B, T, K), tags (B, T), transitions[i, j] scores tag i -> tag
j, start/end transitions (K,). The mask is a prefix mask, so each sequence is its length L (the
mask's row sum, computed on the device); steps past L are never read.

Algorithm (the wavefront of docs/design.md: one program per sequence, the time loop inside the kernel).
The (K, K) transition matrix and the K-vector of log-scores live in registers, padded to
BLOCK_K = next_pow2(K) with -inf, so a time step is one (BLOCK_K x BLOCK_K) tile op:

  alpha sweep   alpha_0 = start + emit_0,
                alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + trans[i, j] + emit_t[j])   (t < L),
                log Z = logsumexp_j(alpha_{L-1}[j] + end[j]).
                Two rewritings keep fp32 accurate (the plain recursion carries log-scores that
                grow like T x the scores, and log Z - score(gold) or alpha + beta - log Z then
                cancel most of their digits):
                - for the NLL every term is shifted by the gold path's own term before it is
                  added (trans[i, j] - trans[g_{t-1}, g_t], emit_t[j] - emit_t[g_t], ...), so the
                  recursion yields log Z - score(g) itself and the gold entry is an exact 0 + 0:
                  a loss far smaller than the path scores keeps its relative accuracy;
                - each step is normalised: a_t = alpha_t - c_t with c_t = max_j (the scaled
                  forward algorithm of HMMs, in log space), and the result is sum_t c_t plus the
                  last logsumexp.
  beta sweep    only when a gradient or the marginals are wanted. The alpha sweep stores a_t in
                a (B, T, K) work buffer and c_t in a (B, T) one; then t runs from L-1 down with
                the same normalisers, b_{L-1} = end - c_end and
                b_{t-1}[i] = logsumexp_j(trans[i, j] + emit_t[j] + b_t[j]) - c_t
                (shifted like alpha for the NLL), so that the marginal is p_t = exp(a_t + b_t)
                with both terms of local size. p_t overwrites a_t in place: the marginals, or
                for the NLL the emission gradient p_t - onehot(g_t). The transition gradient sums
                the pairwise marginals xi_t[i, j] = exp(a_{t-1}[i] + trans[i, j] + emit_t[j] +
                b_t[j] - c_t) minus the observed transition counts in a register tile, stored
                per sequence into a (B, K, K) buffer that torch sums over B (deterministic, no
                atomics).
  Viterbi       the alpha sweep with max for logsumexp and no rewriting (max-plus is exact up
                to one rounding per addition, in the reference's order); backpointers (the
                lowest maximising tag, as torch.max and pytorch-crf break ties) go to a
                (B, T, K) int32 buffer, and the same program backtracks from the best last tag,
                writing -1 past L.

The NLL's gradients w.r.t. start and end are rows of its emission gradient (start[j] enters a
path's score exactly when emit_0[j] does, end[j] when emit_{L-1}[j] does), so the kernel writes
two buffers only. The backward scales them by grad_output (a scalar, or per sequence for
reduction='none'), on the device: grad_output is never assumed to be 1 and never read on the host.

Accumulation is fp32 (fp64 for fp64 inputs); every load is cast right after it (the interpreter
keeps bf16 as raw bits). Gradients stay in the accumulation dtype until the backward has scaled
them, so 16-bit inputs see one rounding.

Limits: the register tiles hold K up to MAX_TAGS = 128 (two K x K tiles per program: at K = 128,
32 warps keep 16 elements of each per thread; compiled for sm_90, the gradient variant spills
about 0.5 KB per thread there and nothing at K <= 64). Above that the kernels decline the call
(_dispatch.KernelDeclined) and the dispatcher runs the reference.
The mask is read as lengths: a mask that is not a prefix mask (which the API excludes) is not
detected. crf_marginals is differentiable by recomputation: its backward runs the reference's
forward-backward under autograd, in float64 (the marginals' Jacobian is the log-partition's
Hessian, which no sweep here computes); it is once-differentiable. That backward is the one
place a kernel module leans on the reference; a kernel for the Hessian is future work.
crf_decode's outputs are not differentiable.
"""
import functools
import importlib

import torch
import triton
import triton.language as tl

from .._reduction import reduce
from .._dispatch import KernelDeclined
from ._common import accumulation_dtype, triton_accumulation
from ._math import logsumexp, subtract_max
from ._autocast import loss_dtype
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
def _crf_forward_backward_kernel(
    emissions_ptr, stride_eb, stride_et, stride_ek,
    tags_ptr, stride_gb, stride_gt,  # gold tags, read when HAS_TAGS
    transitions_ptr, stride_ti, stride_tj,
    start_ptr, stride_s, end_ptr, stride_e,
    lengths_ptr,  # (B,) int64: each sequence's mask row sum, >= 1
    out_ptr,  # (B,): the NLL when HAS_TAGS, else log Z
    work_ptr,  # (B, T, K) contiguous: a_t, then p_t (- onehot(g_t) when HAS_TAGS); zero past L
    shift_ptr,  # (B, T) contiguous: the per-step normalisers c_t
    trans_grad_ptr,  # (B, K, K) contiguous: sum_t xi_t - transition counts, when TRANS_GRAD
    num_steps, num_tags,
    ACC: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_TAGS: tl.constexpr,  # NLL (gold-relative log-scores) rather than log Z / marginals
    BACKWARD_SWEEP: tl.constexpr,  # run the beta sweep and fill the work buffer
    TRANS_GRAD: tl.constexpr,  # accumulate the pairwise marginals (needs HAS_TAGS, BACKWARD_SWEEP)
):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    valid = k < num_tags
    rows = k[:, None]  # from-tag i
    cols = k[None, :]  # to-tag j
    trans = tl.load(transitions_ptr + rows * stride_ti + cols * stride_tj,
                    mask=(rows < num_tags) & (cols < num_tags), other=float("-inf")).to(ACC)
    length = tl.load(lengths_ptr + b)
    emit_row = emissions_ptr + b * stride_eb
    tags_row = tags_ptr + b * stride_gb
    work_row = work_ptr + b * num_steps * num_tags
    shift_row = shift_ptr + b * num_steps

    # alpha sweep on a_t = alpha_t - (c_0 + ... + c_t), log-sum of the normalisers in total
    alpha = (tl.load(start_ptr + k * stride_s, mask=valid, other=float("-inf")).to(ACC)
             + tl.load(emit_row + k * stride_ek, mask=valid, other=float("-inf")).to(ACC))
    if HAS_TAGS:
        gold = tl.load(tags_row).to(tl.int32)
        alpha -= (tl.load(start_ptr + gold * stride_s).to(ACC)
                  + tl.load(emit_row + gold * stride_ek).to(ACC))
    alpha, total = subtract_max(alpha)
    if BACKWARD_SWEEP:
        tl.store(work_row + k, alpha, mask=valid)
    for t in range(1, length):
        emit_t = emit_row + tl.cast(t, tl.int64) * stride_et
        emit = tl.load(emit_t + k * stride_ek, mask=valid, other=float("-inf")).to(ACC)
        if HAS_TAGS:
            next_gold = tl.load(tags_row + t * stride_gt).to(tl.int32)
            trans_gold = tl.load(transitions_ptr + gold * stride_ti + next_gold * stride_tj).to(ACC)
            emit_gold = tl.load(emit_t + next_gold * stride_ek).to(ACC)
            # subtract before adding up: the gold entry is then exactly alpha[gold]
            step = alpha[:, None] + (trans - trans_gold) + (emit - emit_gold)[None, :]
            gold = next_gold
        else:
            step = alpha[:, None] + trans + emit[None, :]
        alpha, c = subtract_max(logsumexp(step, 0))
        total += c
        if BACKWARD_SWEEP:
            tl.store(work_row + t * num_tags + k, alpha, mask=valid)
            tl.store(shift_row + t, c)
    end = tl.load(end_ptr + k * stride_e, mask=valid, other=float("-inf")).to(ACC)
    if HAS_TAGS:
        end -= tl.load(end_ptr + gold * stride_e).to(ACC)
    c_end = logsumexp(alpha + end, 0)
    tl.store(out_ptr + b, total + c_end)  # the NLL (HAS_TAGS) or log Z

    if BACKWARD_SWEEP:
        # b_t = beta_t - (log Z - c_0 - ... - c_t) uses the same normalisers, so
        # p_t = exp(a_t + b_t) with both terms of local size: no cancellation of large sums
        tl.debug_barrier()  # the a_t and c_t stored above are read back by other threads
        beta = end - c_end
        if TRANS_GRAD:
            trans_acc = tl.zeros((BLOCK_K, BLOCK_K), dtype=ACC)
        for s in range(0, length - 1):
            t = length - 1 - s
            p = tl.exp(alpha + beta)
            if HAS_TAGS:
                p -= (k == gold).to(ACC)
            tl.store(work_row + t * num_tags + k, p, mask=valid)
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
            if TRANS_GRAD:
                xi = tl.exp(prev_alpha[:, None] + step)
                trans_acc += xi - ((rows == prev_gold) & (cols == gold)).to(ACC)
            beta = logsumexp(step, 1)
            alpha = prev_alpha
            if HAS_TAGS:
                gold = prev_gold
            tl.debug_barrier()  # the next step overwrites the a_{t-1} just read
        p = tl.exp(alpha + beta)
        if HAS_TAGS:
            p -= (k == gold).to(ACC)
        tl.store(work_row + k, p, mask=valid)
        for t in range(length, num_steps):
            tl.store(work_row + t * num_tags + k, tl.zeros((BLOCK_K,), dtype=ACC), mask=valid)
        if TRANS_GRAD:
            tl.store(trans_grad_ptr + b * num_tags * num_tags + rows * num_tags + cols, trans_acc,
                     mask=(rows < num_tags) & (cols < num_tags))


@triton.jit
def _crf_viterbi_kernel(
    emissions_ptr, stride_eb, stride_et, stride_ek,
    transitions_ptr, stride_ti, stride_tj,
    start_ptr, stride_s, end_ptr, stride_e,
    lengths_ptr,  # (B,) int64, >= 1
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
    length = tl.load(lengths_ptr + b)
    emit_row = emissions_ptr + b * stride_eb
    pointer_row = backpointer_ptr + b * num_steps * num_tags
    tags_row = best_tags_ptr + b * num_steps

    score = (tl.load(start_ptr + k * stride_s, mask=valid, other=float("-inf")).to(ACC)
             + tl.load(emit_row + k * stride_ek, mask=valid, other=float("-inf")).to(ACC))
    for t in range(1, length):
        emit = tl.load(emit_row + tl.cast(t, tl.int64) * stride_et + k * stride_ek, mask=valid,
                       other=float("-inf")).to(ACC)
        step = score[:, None] + trans + emit[None, :]  # the reference's order of additions
        score = tl.max(step, axis=0)
        # lowest maximising from-tag (padding rows are -inf, so a real row ties first)
        previous = tl.min(tl.where(step == score[None, :], rows, BLOCK_K), axis=0)
        tl.store(pointer_row + t * num_tags + k, previous, mask=valid)
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


def _reference(name):
    """The reference of `name`, for the marginals' backward only (imported on use)."""
    return getattr(importlib.import_module("fusedloss.reference"), name)


def _result_dtype(*tensors):
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors])


def _lengths(emissions, mask):
    """Each sequence's length, int64 on the device (no host sync)."""
    batch, num_steps = emissions.shape[:2]
    if mask is None:
        return torch.full((batch,), num_steps, dtype=torch.int64, device=emissions.device)
    return mask.sum(1, dtype=torch.int64)


def _forward_backward(emissions, tags, transitions, start, end, lengths, acc, sweep, trans_grad):
    """Launch the forward-backward kernel: (per-sequence NLL or log Z, work buffer, trans buffer)."""
    batch, num_steps, num_tags = emissions.shape
    device = emissions.device
    out = torch.empty(batch, dtype=acc, device=device)
    work = torch.empty((batch, num_steps, num_tags) if sweep else (0,), dtype=acc, device=device)
    shifts = torch.empty((batch, num_steps) if sweep else (0,), dtype=acc, device=device)
    trans_work = torch.empty((batch, num_tags, num_tags) if trans_grad else (0,), dtype=acc,
                             device=device)
    if batch > 0:
        block_k = _tag_block(num_tags)
        has_tags = tags is not None
        _crf_forward_backward_kernel[(batch,)](
            emissions, *emissions.stride(),
            tags if has_tags else lengths, *(tags.stride() if has_tags else (0, 0)),
            transitions, *transitions.stride(),
            start, start.stride(0), end, end.stride(0),
            lengths, out, work if sweep else out, shifts if sweep else out,
            trans_work if trans_grad else out,
            num_steps, num_tags,
            ACC=triton_accumulation(acc), BLOCK_K=block_k,
            HAS_TAGS=has_tags, BACKWARD_SWEEP=sweep, TRANS_GRAD=trans_grad,
            num_warps=_tag_warps(block_k),
        )
    return out, work, trans_work


class _CRFNLL(torch.autograd.Function):
    """The forward writes d(NLL_b)/d(emissions) and per-sequence transition gradients; the
    backward scales them by grad_output and sums over the batch."""

    @staticmethod
    def forward(ctx, emissions, tags, transitions, start, end, lengths, reduction, needs):
        dtype = _result_dtype(emissions, transitions, start, end)
        acc = accumulation_dtype(dtype)
        nll, work, trans_work = _forward_backward(
            emissions, tags, transitions, start, end, lengths, acc, sweep=any(needs),
            trans_grad=needs[1])
        ctx.save_for_backward(work, trans_work, lengths)
        ctx.reduction, ctx.needs, ctx.acc = reduction, needs, acc
        ctx.dtypes = (emissions.dtype, transitions.dtype, start.dtype, end.dtype)
        return reduce(nll, reduction).to(loss_dtype(dtype, nll.device))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        work, trans_work, lengths = ctx.saved_tensors
        batch = lengths.shape[0]
        # per-sequence factor d(loss)/d(NLL_b), on the device
        scale = grad_output.to(ctx.acc).expand(batch)
        if ctx.reduction == "mean":
            scale = scale / batch
        need_emissions, need_transitions, need_start, need_end = ctx.needs
        emissions_dtype, transitions_dtype, start_dtype, end_dtype = ctx.dtypes
        grads = [None] * 4
        if need_emissions:
            grads[0] = scale_gradient(work, scale.view(batch, 1, 1)).to(emissions_dtype)
        if need_transitions:
            grads[1] = (trans_work * scale.view(batch, 1, 1)).sum(0).to(transitions_dtype)
        if need_start:
            grads[2] = (work[:, 0] * scale[:, None]).sum(0).to(start_dtype)
        if need_end:
            last = work[torch.arange(batch, device=work.device), lengths - 1]
            grads[3] = (last * scale[:, None]).sum(0).to(end_dtype)
        emissions, transitions, start, end = grads
        return emissions, None, transitions, start, end, None, None, None


class _CRFMarginals(torch.autograd.Function):
    """Forward: the forward-backward kernel. Backward: recomputation through the reference."""

    @staticmethod
    def forward(ctx, emissions, transitions, start, end, mask, lengths):
        dtype = _result_dtype(emissions, transitions, start, end)
        acc = accumulation_dtype(dtype)
        _, marginals, _ = _forward_backward(emissions, None, transitions, start, end, lengths, acc,
                                            sweep=True, trans_grad=False)
        ctx.save_for_backward(emissions, transitions, start, end, mask)
        return marginals.to(loss_dtype(dtype, marginals.device))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        # in float64: the reference's unnormalised forward-backward loses fp32 digits to
        # cancellation between log Z and the alphas, and this path is the slow one anyway
        inputs, mask = ctx.saved_tensors[:4], ctx.saved_tensors[4]
        needs = ctx.needs_input_grad[:4]
        with torch.enable_grad():
            leaves = [x.detach().double().requires_grad_(need) for x, need in zip(inputs, needs)]
            marginals = _reference("crf_marginals")(*leaves, mask=mask)
            wanted = [leaf for leaf, need in zip(leaves, needs) if need]
            grads = iter(torch.autograd.grad(marginals, wanted, grad_output.double(),
                                             allow_unused=True))
        result = []
        for x, need in zip(inputs, needs):
            grad = next(grads) if need else None
            if need and grad is None:
                grad = torch.zeros_like(x)
            result.append(grad.to(x.dtype) if grad is not None else None)
        return (*result, None, None)


def crf_nll(emissions, tags, transitions, start_transitions, end_transitions, mask=None,
            reduction="mean"):
    _check_tag_count(emissions.shape[2])
    needs = wanted_gradients(emissions, transitions, start_transitions, end_transitions)
    return _CRFNLL.apply(emissions, tags, transitions, start_transitions, end_transitions,
                         _lengths(emissions, mask), reduction, needs)


def crf_marginals(emissions, transitions, start_transitions, end_transitions, mask=None):
    _check_tag_count(emissions.shape[2])
    return _CRFMarginals.apply(emissions, transitions, start_transitions, end_transitions, mask,
                               _lengths(emissions, mask))


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
        backpointers = torch.empty((batch, num_steps, num_tags), dtype=torch.int32, device=device)
        _crf_viterbi_kernel[(batch,)](
            emissions, *emissions.stride(), transitions, *transitions.stride(),
            start_transitions, start_transitions.stride(0),
            end_transitions, end_transitions.stride(0),
            _lengths(emissions, mask), scores, backpointers, best_tags,
            num_steps, num_tags,
            ACC=triton_accumulation(acc), BLOCK_K=block_k, num_warps=_tag_warps(block_k),
        )
    return scores.to(loss_dtype(dtype, scores.device)), best_tags


KERNELS = {
    "crf_nll": crf_nll,
    "crf_decode": crf_decode,
    "crf_marginals": crf_marginals,
}
