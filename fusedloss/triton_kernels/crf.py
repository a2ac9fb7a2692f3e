"""Linear-chain CRF kernels: the negative log-likelihood with its gradients (forward-backward),
the per-position tag marginals with their gradient, and Viterbi decoding.

Shapes are batch-first: emissions (B, T, K), tags (B, T), transitions[i, j] scores tag i -> tag
j, start/end transitions (K,). The mask is applied step by step, as pytorch-crf applies it: a
step whose mask is off leaves the recursion's state as it was (any mask with the first step on,
not only prefixes); the gold score adds transitions[tags[t-1], tags[t]] + emissions[t, tags[t]]
at each step t that is on, and end_transitions[tags[L-1]] with L the mask's row sum. Each sweep
stops at its sequence's last step that is on (`last`, found on the device).

Tiles. Every K-vector and the K x K transitions are swept in TILE-wide tiles (TILE x TILE for
the transitions), so no tag count is refused. Where one tile covers K (K <= MAX_TAG_TILE = 128),
the transitions and the recursion's state stay in registers for the whole sweep; above that,
tiles of 64: each step reads the previous state back from its buffer tile by tile (alpha keeps
two slots of it when no gradient is wanted) and the transitions from L2, with an online
logsumexp over the from-tag tiles (a running max and a rescaled sum).

Prefetch. What a step reads that does not depend on the state is loaded one step ahead, during
the previous step's reductions, and carried in registers (`_step_ahead`): the step's mask bit,
alpha's gold shift (trans[g_{t-1}, g_t], emit_t[g_t]; the gold tags those loads index by run one
step further ahead) and, with one tile, the whole emission row. The tangent's row (the
marginals' backward) loads where it is used, after the reductions: that sweep sits at 255
registers on triton 3.6, and carried a step ahead or loaded before the reductions it spilled. With several tiles a row of K
does not fit in registers: each column tile loads its emissions (and tangent) before its
from-tile reductions, which stream the transitions from L2. Viterbi does the
same with its mask bit and emission row. Loads only move: every value is the same bit for bit
(the tests run the one-tile code and the tiled code on the same K and compare exactly).

Algorithm: three kernels, each filling the GPU on its own axis, after a small first launch.

  0. steps, grid (B,): one sweep of each mask row for L and the last step that is on, and with
     tags a second that reads a tag only where the gold score does (each step on, the step
     before it, step L - 1), wraps it into [0, K) and writes 0 everywhere else, so no
     later kernel indexes with a tag it was not given in range. Where the value checks are the
     call's (CUDA), it records them as it reads: a verdict each for the mask's first step and
     the tags' range, one queued assert each, in place of the torch ops a check over the
     tensors would take.
  1. sweeps, grid (B, 2): alpha (direction 0) and beta (direction 1) run at once, one program
     each per sequence, the time loop inside the kernel. Beta is alpha on the reversed chain of
     steps that are on, with the transitions transposed and start/end swapped, so both run one
     step rule: with the state s (log-scores including the step's emission, normalised),
                column[j] = logsumexp_i(s[i] + trans[i, j])     (trans^T for beta)
                s'[j] = column[j] + emit_t[j] - c_t,   c_t = max_j (column + emit_t).
     Alpha stores u_t = column + emit_t (alpha_t up to the normalisers before t) into a (B, T, K)
     work buffer, copied forward over steps that are off; beta stores its pre-emission column
     (beta_t up to a constant) at the steps that are on. The normalisers keep every stored value
     of local size (the scaled forward algorithm of HMMs, in log space), and log Z (or the NLL)
     is sum_t c_t plus the last logsumexp. For the NLL alpha also subtracts the gold path's own
     terms before adding (trans[i, j] - trans[g_{t-1}, g_t], emit_t[j] - emit_t[g_t], ...), so
     it yields log Z - score(g) itself and a loss far smaller than the path scores keeps its
     fp32 accuracy; beta needs no shift (its values only enter normalised ratios). Alpha stores
     per step enter_t = c_{t-1} + (the gold shift of step t), the constant that turns its stored
     values back into the pairwise marginals below.
  2. marginals, grid over (batch x time) rows: p_t = softmax_j(u_t + beta_t) (every constant
     drops out of the softmax: no large sums cancel), written as the marginals or, for the NLL,
     the emission gradient p_t - onehot(g_t); the start gradient is row 0 of it (start[j] enters
     a path's score exactly when emit_0[j] does), the end gradient P(last = j) - onehot(g_{L-1})
     at t = last; both per sequence. It stores Q_t = logsumexp_j(u_t + beta_t) + enter_t.
  3. transitions, grid (tile pairs, P), only when their gradient is wanted: each program sums
     the pairwise marginals of its tile over a contiguous share of the batch's steps, taken in
     order (b, t) across sequence boundaries,
                xi_t[i, j] = exp(u_{t-1}[i] + trans[i, j] + emit_t[j] + beta_t[j] - Q_t),
     less the observed transition counts, into one K x K partial per program; torch sums the
     partials in a fixed order (deterministic, no atomics). For 'mean' and 'sum' P is fixed by
     the GPU (about 264 programs over all tile pairs, at least 8 steps each), not by B: at
     B = 64, T = 512, K = 1024 (256 tile pairs of 64) P = 2, 8 MiB of fp32 partials, where one
     partial per sequence took 256 MiB. reduction='none' scales each sequence's gradient by its
     own grad_output, unknown when this kernel runs (in the forward), so there each program
     takes one time chunk of one sequence and the partials stay per sequence (B x chunks, one
     chunk per sequence once B x tile pairs fills the GPU: 256 MiB at that size, the least
     without deferring the kernel to the backward, which would keep the (2, B, T, K) states
     alive instead, as large at that size and larger whenever 2T > K).
  tangent       the marginals' backward. p = d log Z / d emit, so the gradient of <g, p> is the
                log-partition's Hessian times g: Cov(G, feature) with G(y) = sum_t g_t[y_t]. Each
                sweep also carries the expectation of g along its chain: alpha
                A_t[j] = E[g_0 + ... + g_t | y_t = j], beta B'_t[i] = E[g_t + g_{t+1} + ... |
                y_t = i] (each the softmax over the step's from-tags of the previous one, plus
                g_t; online over the tiles like the logsumexp); then with h_t = A_t + B'_t - g_t,
                E[G] = sum_j p_t[j] h_t[j] (kernel 2, per step),
                d/d emit_t[j] = p_t[j] (h_t[j] - E[G]) and
                d/d trans[i, j] = sum_t xi_t[i, j] (A_{t-1}[i] + B'_t[j] - E[G]).
  Viterbi       grid (B,): the alpha sweep with max for logsumexp and no rewriting (max-plus is
                exact up to one rounding per addition, in the reference's order); backpointers
                (the lowest maximising tag, as torch.max and pytorch-crf break ties: across tiles
                a later tile wins only by a strictly larger score) go to a (B, T, K) int32
                buffer, and the same program backtracks from the best last tag through the
                backpointers of steps L-1 .. 1 (pytorch-crf's walk), writing -1 past L.

The NLL's backward is the shared one (_precomputed_gradient.py): the kernels write the gradients
already multiplied by the reduction's 1/B, the emission gradient in the emissions' dtype, the
parameters' as fp32 partials (per sequence for the start/end rows and for reduction='none');
a grad_output of exactly 1 then moves nothing, any other scales in place, and the partials are
summed last (a per-sequence grad_output of reduction='none' scales each sequence's partials
first).

Accumulation is fp32 (fp64 for fp64 inputs); every load is cast right after it (the interpreter
keeps bf16 as raw bits). crf_marginals is once-differentiable; crf_decode's outputs are not
differentiable.
"""
import dataclasses
import functools

import torch
import triton
import triton.language as tl

from .._autocast import loss_dtype
from .._reduction import reduce
from ._common import (GPU_LAUNCH_PARAMS, accumulation_dtype, fp32_pair, round_to, step_row,
                      triton_accumulation)
from ._precomputed_gradient import Sweep, precomputed_gradient, wanted_gradients

# Widest tile of tags: where one covers K, the (K, K) transitions stay in registers (at 128, 32
# warps keep 16 elements of each tile per thread). Tests lower it to run small K over several
# tiles.
MAX_TAG_TILE = 128
# Elements of (row, tag) per program of the marginals kernel.
_MARGINAL_ELEMENTS = 2048 if GPU_LAUNCH_PARAMS else 64
# Programs the transition-gradient kernel aims for on a GPU over all its tile pairs (two per SM
# of an sm_90 GPU); under the interpreter two per tile pair ('none': two time chunks per
# sequence), so that programs cross sequences and the partials' sum has several to combine.
_TRANSITION_PROGRAMS = 264


def _tag_tile(num_tags):
    """One tile covering K up to MAX_TAG_TILE; above that, tiles of half of it (64 x 64 on the
    GPU: streamed from L2 every step, 128 x 128 tiles spilled when compiled for sm_90)."""
    whole = triton.next_power_of_2(max(num_tags, 1))
    return whole if whole <= MAX_TAG_TILE else max(1, MAX_TAG_TILE // 2)


def _in_registers(num_tags):
    """Whether one tile covers K, so the sweeps keep the state and transitions in registers and
    prefetch whole rows (tests turn it off to run the tiled code on the same K)."""
    return _tag_tile(num_tags) >= num_tags


def _tag_warps(tile):
    """About 16 elements of each (TILE, TILE) tile per thread (8 warps at 64, 32 at 128)."""
    return max(1, min(32, tile * tile // 512))


@triton.jit
def _merge_lse(m, total, weighted, x, carry, AXIS: tl.constexpr, TANGENT: tl.constexpr):
    """One tile of an online logsumexp of x along AXIS: (running max, sum of exp(x - max) and,
    when TANGENT, of exp(x - max) * carry), each rescaled to the new max. An all -inf line
    keeps max -inf and sums 0."""
    m_new = tl.maximum(m, tl.max(x, axis=AXIS))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.exp(m - shift)
    e = tl.exp(x - tl.expand_dims(shift, AXIS))
    total = total * rescale + tl.sum(e, axis=AXIS)
    if TANGENT:
        weighted = weighted * rescale + tl.sum(e * carry, axis=AXIS)
    return m_new, total, weighted


@triton.jit
def _tile_lse(x, carry, AXIS: tl.constexpr, TANGENT: tl.constexpr):
    """_merge_lse of one tile into an empty one (max -inf, sums 0), without the rescaling that
    multiplies those sums by 0: the same bits."""
    m = tl.max(x, axis=AXIS)
    e = tl.exp(x - tl.expand_dims(tl.where(m == float("-inf"), 0.0, m), AXIS))
    weighted = 0.0
    if TANGENT:
        weighted = tl.sum(e * carry, axis=AXIS)
    return m, tl.sum(e, axis=AXIS), weighted


@triton.jit
def _step_ahead(s, last, forward, mask_t, mask_step, emit_t, emit_step, emit_cols, tags_t,
                stride_gt, gold, next_gold, transitions_ptr, stride_ti, stride_tj, stride_ek,
                num_tags, ACC: tl.constexpr, TILE: tl.constexpr, HAS_TAGS: tl.constexpr,
                SINGLE_TILE: tl.constexpr):
    """What step s + 1 of a sweep reads that does not depend on the state, loaded during step s
    (pointers at step s, moved by their steps): its mask bit; alpha's gold shift
    trans[g_s, g_{s+1}] and emit_{s+1}[g_{s+1}], whose loads depend on the gold tags, so the
    tags run one step further ahead (returns g_{s+1} and g_{s+2} as the next gold pair); with
    one tile its emission row. Past the last step nothing is loaded."""
    live = s < last
    step_mask = tl.load(mask_t + mask_step, mask=live, other=0)
    emit_next = emit_t + emit_step
    trans_gold = tl.full([], 0, dtype=ACC)
    emit_gold = tl.full([], 0, dtype=ACC)
    after_gold = next_gold
    if HAS_TAGS:
        gold_live = forward & live
        trans_gold = tl.load(transitions_ptr + gold * stride_ti + next_gold * stride_tj,
                             mask=gold_live, other=0.0).to(ACC)
        emit_gold = tl.load(emit_next + next_gold * stride_ek, mask=gold_live, other=0.0).to(ACC)
        after_gold = tl.load(tags_t + 2 * stride_gt, mask=forward & (s + 2 <= last), other=0)
    emit = tl.full((TILE,), 0, dtype=ACC)
    if SINGLE_TILE:
        emit = tl.load(emit_next + emit_cols, mask=tl.where(live, tl.arange(0, TILE) < num_tags,
                                                            False), other=float("-inf")).to(ACC)
    return step_mask, trans_gold, emit_gold, next_gold, after_gold, emit


@triton.jit
def _crf_sweep_kernel(
    emissions_ptr, stride_eb, stride_et, stride_ek,
    tags_ptr, stride_gb, stride_gt,  # gold tags in [0, K), read when HAS_TAGS
    end_tags_ptr,  # (B,) int64: tags[b, L-1], whose end transition the gold score takes
    transitions_ptr, stride_ti, stride_tj,
    start_ptr, stride_s, end_ptr, stride_e,
    mask_ptr, stride_mb, stride_mt,  # (B, T) uint8, 0 where a step is off (strides 0: all on)
    last_ptr,  # (B,) int64: each sequence's last step that is on
    tangent_ptr, stride_ub, stride_ut, stride_uk,  # (B, T, K) g, the marginals' grad_output
    out_ptr,  # (B,): the NLL when HAS_TAGS, else log Z (written by alpha)
    state_ptr,  # (2, B, STATE_STEPS, K) contiguous: u_t (alpha), beta's columns (beta)
    enter_ptr,  # (B, T) contiguous: alpha's enter_t (module header), when STORE_ALL
    carry_ptr,  # (2, B, T, K) contiguous: A_t (alpha), B'_t (beta), when TANGENT
    batch, num_steps, num_tags, state_steps,
    ACC: tl.constexpr, TILE: tl.constexpr, SINGLE_TILE: tl.constexpr,
    HAS_TAGS: tl.constexpr,  # NLL (gold-relative log-scores) rather than log Z / marginals
    STORE_ALL: tl.constexpr,  # keep every step's state for the marginals (else 2 slots)
    TANGENT: tl.constexpr,  # carry the tangent's expectations (module header)
):
    b = tl.program_id(0).to(tl.int64)
    direction = tl.program_id(1)
    forward = direction == 0
    backward = direction == 1
    k = tl.arange(0, TILE)
    # no tl.cdiv / tl.zeros in these kernels: each jit-function call costs the interpreter a
    # re-patch of triton.language, the bulk of the tests' time
    num_tiles = (num_tags + TILE - 1) // TILE
    last = tl.load(last_ptr + b)
    # beta is alpha on the reversed chain: transitions transposed, start and end swapped
    stride_from = tl.where(forward, stride_ti, stride_tj)
    stride_to = tl.where(forward, stride_tj, stride_ti)
    emit_row = emissions_ptr + b * stride_eb
    tags_row = tags_ptr + b * stride_gb
    mask_row = mask_ptr + b * stride_mb
    tangent_row = tangent_ptr + b * stride_ub
    state_row = state_ptr + (direction * batch + b) * state_steps * num_tags
    carry_row = carry_ptr + (direction * batch + b) * num_steps * num_tags
    enter_row = enter_ptr + b * num_steps

    if SINGLE_TILE:  # one tile covers K: the transitions stay in registers
        valid = k < num_tags
        trans = tl.load(transitions_ptr + k[:, None] * stride_from + k[None, :] * stride_to,
                        mask=valid[:, None] & valid[None, :], other=float("-inf")).to(ACC)

    # the first state: start + emit_0 (alpha), end + emit_last (beta)
    first_step = tl.where(forward, 0, last)
    shift = 0.0
    if HAS_TAGS:
        # only alpha shifts by the gold path
        first_gold = tl.load(tags_row, mask=forward, other=0)
        shift = (tl.load(start_ptr + first_gold * stride_s, mask=forward, other=0.0).to(ACC)
                 + tl.load(emit_row + first_gold * stride_ek, mask=forward, other=0.0).to(ACC))
    norm = tl.full([], float("-inf"), dtype=ACC)
    state = tl.full((TILE,), 0, dtype=ACC)  # the normalised state (registers, SINGLE_TILE)
    stored = tl.full((TILE,), 0, dtype=ACC)  # what the buffer keeps of it
    carry = tl.full((TILE,), 0, dtype=ACC)
    for jt in range(0, num_tiles):
        cols = jt * TILE + k
        cvalid = cols < num_tags
        first = tl.where(forward,
                         tl.load(start_ptr + cols * stride_s, mask=tl.where(forward, cvalid, False),
                                 other=float("-inf")).to(ACC),
                         tl.load(end_ptr + cols * stride_e, mask=tl.where(backward, cvalid, False),
                                 other=float("-inf")).to(ACC))
        emit = tl.load(emit_row + first_step * stride_et + cols * stride_ek, mask=cvalid,
                       other=float("-inf")).to(ACC)
        state = first + emit - shift
        stored = tl.where(forward, state, first)
        if STORE_ALL or not SINGLE_TILE:
            tl.store(step_row(state_row, first_step, num_tags, STORE_ALL) + cols, stored,
                     mask=cvalid)
        if TANGENT:
            carry = tl.load(tangent_row + first_step * stride_ut + cols * stride_uk, mask=cvalid,
                            other=0.0).to(ACC)
            tl.store(carry_row + first_step * num_tags + cols, carry, mask=cvalid)
        norm = tl.maximum(norm, tl.max(state, axis=0))
    norm = tl.where(norm == float("-inf"), 0.0, norm)
    state -= norm
    total = norm
    previous = first_step  # the step whose state the next step that is on reads
    if not SINGLE_TILE:
        tl.debug_barrier()  # the state stored above is read back by other threads

    # pointers at step t, moved by one step each iteration (the interpreter checks every
    # integer product for overflow, so the loop keeps products out of the single-tile path)
    sign = tl.where(forward, 1, -1)
    mask_step = sign * stride_mt
    emit_step = sign * stride_et
    tangent_step = sign * stride_ut
    state_step = sign * num_tags
    mask_t = mask_row + first_step * stride_mt
    emit_t = emit_row + first_step * stride_et
    tangent_t = tangent_row + first_step * stride_ut
    state_t = state_row + first_step * num_tags  # when STORE_ALL
    carry_t = carry_row + first_step * num_tags  # when TANGENT
    tags_t = tags_row  # alpha's gold tag at t
    emit_cols = k * stride_ek
    tangent_cols = k * stride_uk
    # step 1's inputs (prefetch: module header); the gold tags run one step further ahead
    gold = tl.full([], 0, dtype=tl.int64)
    ahead_gold = gold
    if HAS_TAGS:
        gold = first_gold
        ahead_gold = tl.load(tags_t + stride_gt, mask=forward & (last >= 1), other=0)
    ahead_mask, ahead_trans_gold, ahead_emit_gold, gold, ahead_gold, ahead_emit = _step_ahead(
        0, last, forward, mask_t, mask_step, emit_t, emit_step, emit_cols, tags_t, stride_gt,
        gold, ahead_gold, transitions_ptr, stride_ti, stride_tj, stride_ek, num_tags,
        ACC, TILE, HAS_TAGS, SINGLE_TILE)
    for s in range(1, last + 1):
        t = tl.where(forward, s, last - s)
        mask_t += mask_step
        emit_t += emit_step
        if TANGENT:
            tangent_t += tangent_step
            carry_t += state_step
        if STORE_ALL:
            state_t += state_step
        if HAS_TAGS:
            tags_t += stride_gt
        on = ahead_mask != 0
        if not SINGLE_TILE:
            off = ahead_mask == 0
        trans_gold = ahead_trans_gold
        emit_gold = ahead_emit_gold
        emit = ahead_emit
        # step s + 1's inputs, in flight during this step's reductions
        ahead_mask, ahead_trans_gold, ahead_emit_gold, gold, ahead_gold, ahead_emit = \
            _step_ahead(s, last, forward, mask_t, mask_step, emit_t, emit_step, emit_cols, tags_t,
                        stride_gt, gold, ahead_gold, transitions_ptr, stride_ti, stride_tj,
                        stride_ek, num_tags, ACC, TILE, HAS_TAGS, SINGLE_TILE)
        if STORE_ALL:
            state_at = state_t
        else:
            state_at = state_row + (t % 2) * num_tags
        if not SINGLE_TILE:
            previous_at = step_row(state_row, previous, num_tags, STORE_ALL)
        new_norm = tl.full([], float("-inf"), dtype=ACC)
        new_state = tl.full((TILE,), 0, dtype=ACC)
        new_carry = tl.full((TILE,), 0, dtype=ACC)
        for jt in range(0, num_tiles):
            if SINGLE_TILE:
                cols = k
            else:
                cols = jt * TILE + k
            cvalid = cols < num_tags
            if not SINGLE_TILE:  # the column tile's rows, loaded before its reductions
                emit = tl.load(emit_t + cols * stride_ek, mask=cvalid,
                               other=float("-inf")).to(ACC)
                if TANGENT:
                    g = tl.load(tangent_t + cols * stride_uk, mask=cvalid, other=0.0).to(ACC)
            # subtract before adding up: on a gold path the entry is exactly the state's
            if SINGLE_TILE:
                m, total_exp, weighted = _tile_lse(state[:, None] + (trans - trans_gold),
                                                   carry[:, None], 0, TANGENT)
            else:
                m = tl.full((TILE,), float("-inf"), dtype=ACC)
                total_exp = tl.full((TILE,), 0, dtype=ACC)
                weighted = tl.full((TILE,), 0, dtype=ACC)
                for it in range(0, num_tiles):
                    rows = it * TILE + k
                    rvalid = rows < num_tags
                    prev = tl.load(previous_at + rows, mask=rvalid, other=float("-inf"))
                    # beta keeps its columns: the state adds their step's emission back
                    prev += tl.load(emit_row + previous * stride_et + rows * stride_ek,
                                    mask=tl.where(backward, rvalid, False), other=0.0).to(ACC)
                    prev -= norm
                    prev_carry = tl.full((TILE,), 0, dtype=ACC)
                    if TANGENT:
                        prev_carry = tl.load(carry_row + previous * num_tags + rows, mask=rvalid,
                                             other=0.0)
                    block = tl.load(transitions_ptr + rows[:, None] * stride_from
                                    + cols[None, :] * stride_to,
                                    mask=rvalid[:, None] & cvalid[None, :],
                                    other=float("-inf")).to(ACC)
                    m, total_exp, weighted = _merge_lse(m, total_exp, weighted,
                                                        prev[:, None] + (block - trans_gold),
                                                        prev_carry[:, None], 0, TANGENT)
            column = tl.where(m == float("-inf"), 0.0, m) + tl.log(total_exp)
            new_state = column + (emit - emit_gold)
            value = tl.where(forward, new_state, column)
            if SINGLE_TILE:
                old = stored
            else:  # alpha copies its state over a step that is off
                old = tl.load(previous_at + cols, mask=tl.where(forward & off, cvalid, False),
                              other=0.0)
            value = tl.where(on, value, old)
            if SINGLE_TILE:
                stored = value
            if STORE_ALL or not SINGLE_TILE:
                tl.store(state_at + cols, value, mask=tl.where(forward | on, cvalid, False))
            if TANGENT:
                if SINGLE_TILE:  # loaded where it is used (module header)
                    g = tl.load(tangent_t + tangent_cols, mask=valid, other=0.0).to(ACC)
                new_carry = g + tl.where(total_exp > 0, weighted / total_exp, 0.0)
                if SINGLE_TILE:
                    old_carry = carry
                else:
                    old_carry = tl.load(carry_row + previous * num_tags + cols,
                                        mask=tl.where(forward & off, cvalid, False), other=0.0)
                new_carry = tl.where(on, new_carry, old_carry)
                tl.store(carry_t + cols, new_carry, mask=tl.where(forward | on, cvalid, False))
            new_norm = tl.maximum(new_norm, tl.max(tl.where(cvalid, new_state, float("-inf")),
                                                   axis=0))
        new_norm = tl.where(new_norm == float("-inf"), 0.0, new_norm)
        if STORE_ALL:
            if forward:
                tl.store(enter_row + t, norm + trans_gold + emit_gold)
        if SINGLE_TILE:
            state = tl.where(on, new_state - new_norm, state)
            if TANGENT:
                carry = new_carry
        total += tl.where(on, new_norm, 0.0)
        norm = tl.where(on, new_norm, norm)
        previous = tl.where(on | forward, t, previous)
        if not SINGLE_TILE:
            tl.debug_barrier()  # this step's state is read back by other threads

    # alpha: log Z (less the gold score) = the normalisers + logsumexp_j(state_last + end)
    end_gold = 0.0
    if HAS_TAGS:
        end_gold = tl.load(end_ptr + tl.load(end_tags_ptr + b) * stride_e).to(ACC)
    m = tl.full([], float("-inf"), dtype=ACC)
    total_exp = tl.full([], 0, dtype=ACC)
    for jt in range(0, num_tiles):
        cols = jt * TILE + k
        cvalid = cols < num_tags
        if SINGLE_TILE:
            final = state
        else:
            final = tl.load(step_row(state_row, previous, num_tags, STORE_ALL) + cols,
                            mask=tl.where(forward, cvalid, False), other=float("-inf")) - norm
        final += tl.load(end_ptr + cols * stride_e, mask=tl.where(forward, cvalid, False),
                         other=float("-inf")).to(ACC) - end_gold
        m, total_exp, _ = _merge_lse(m, total_exp, 0.0, final, 0.0, 0, False)
    log_partition = total + tl.where(m == float("-inf"), 0.0, m) + tl.log(total_exp)
    tl.store(out_ptr + b, log_partition, mask=forward)


@triton.jit
def _marginal_scores(alpha_rows, beta_rows, carry_rows, tangent_rows, stride_uk, cols, live,
                     num_cells, TANGENT: tl.constexpr):
    """One (ROWS, TILE) tile of u_t + beta_t (-inf where not live) and, when TANGENT,
    h_t = A_t + B'_t - g_t."""
    x = (tl.load(alpha_rows + cols, mask=live, other=float("-inf"))
         + tl.load(beta_rows + cols, mask=live, other=float("-inf")))
    h = tl.full(x.shape, 0, dtype=x.dtype)
    if TANGENT:
        h = (tl.load(carry_rows + cols, mask=live, other=0.0)
             + tl.load(carry_rows + num_cells + cols, mask=live, other=0.0)
             - tl.load(tangent_rows + cols * stride_uk, mask=live, other=0.0).to(x.dtype))
    return x, h


@triton.jit
def _crf_marginal_kernel(
    state_ptr,  # (2, B, T, K) contiguous, as the sweeps stored it
    carry_ptr,  # (2, B, T, K) contiguous, when TANGENT
    tangent_ptr, stride_ub, stride_ut, stride_uk,  # (B, T, K), when TANGENT
    tags_ptr, stride_gb, stride_gt, end_tags_ptr,  # when HAS_TAGS
    mask_ptr, stride_mb, stride_mt, last_ptr,
    enter_ptr,  # (B, T): alpha's enter_t, when PAIRS
    pair_shift_ptr,  # (B, T): Q_t for the transition kernel, when PAIRS
    expected_ptr,  # (B, T): E[G] per step, when PAIRS and TANGENT
    out_ptr,  # (B, T, K) contiguous: marginals, or the emission gradient
    start_grad_ptr, end_grad_ptr,  # (B, K) contiguous accumulation dtype, when EDGES
    weight_hi, weight_lo,  # the factor every gradient carries (1/B for reduction='mean')
    batch, num_steps, num_tags,
    ACC: tl.constexpr, TILE: tl.constexpr, ROWS: tl.constexpr, SINGLE_TILE: tl.constexpr,
    HAS_TAGS: tl.constexpr, TANGENT: tl.constexpr, PAIRS: tl.constexpr, EDGES: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rvalid = r < batch * num_steps
    b = r // num_steps
    t = r % num_steps
    on = (tl.load(mask_ptr + b * stride_mb + t * stride_mt, mask=rvalid, other=0) != 0) & rvalid
    k = tl.arange(0, TILE)
    num_tiles = (num_tags + TILE - 1) // TILE
    num_cells = batch * num_steps * num_tags
    alpha_rows = state_ptr + r[:, None] * num_tags
    beta_rows = alpha_rows + num_cells
    carry_rows = carry_ptr + r[:, None] * num_tags
    tangent_rows = tangent_ptr + (b * stride_ub + t * stride_ut)[:, None]

    m = tl.full((ROWS,), float("-inf"), dtype=ACC)
    total_exp = tl.full((ROWS,), 0, dtype=ACC)
    weighted = tl.full((ROWS,), 0, dtype=ACC)
    x = tl.full((ROWS, TILE), float("-inf"), dtype=ACC)
    h = tl.full((ROWS, TILE), 0, dtype=ACC)
    for jt in range(0, num_tiles):
        cols = (jt * TILE + k)[None, :]
        x, h = _marginal_scores(alpha_rows, beta_rows, carry_rows, tangent_rows, stride_uk, cols,
                                on[:, None] & (cols < num_tags), num_cells, TANGENT)
        m, total_exp, weighted = _merge_lse(m, total_exp, weighted, x, h, 1, TANGENT)
    lse = tl.where(m == float("-inf"), 0.0, m) + tl.log(total_exp)
    expected = tl.where(total_exp > 0, weighted / total_exp, 0.0)  # E[G], when TANGENT
    if PAIRS:
        enter = tl.load(enter_ptr + r, mask=on, other=0.0)
        tl.store(pair_shift_ptr + r, lse + enter, mask=on)
        if TANGENT:
            tl.store(expected_ptr + r, expected, mask=on)

    weight = tl.cast(weight_hi, ACC) + weight_lo
    if HAS_TAGS:
        gold = tl.load(tags_ptr + b * stride_gb + t * stride_gt, mask=on, other=-1)
    if EDGES:
        last = tl.load(last_ptr + b, mask=rvalid, other=-1)
        if HAS_TAGS:
            end_tag = tl.load(end_tags_ptr + b, mask=rvalid, other=-1)
    for jt in range(0, num_tiles):
        cols = (jt * TILE + k)[None, :]
        live = rvalid[:, None] & (cols < num_tags)
        if not SINGLE_TILE:  # one tile covering K keeps the first pass's scores
            x, h = _marginal_scores(alpha_rows, beta_rows, carry_rows, tangent_rows, stride_uk,
                                    cols, on[:, None] & (cols < num_tags), num_cells, TANGENT)
        p = tl.where(x == float("-inf"), 0.0, tl.exp(x - lse[:, None]))
        if TANGENT:
            p *= h - expected[:, None]
        if EDGES:  # at t = last: P(last tag = j) - onehot(tags[L-1]), or the tangent's term
            edge = p
            if HAS_TAGS:
                edge = p - (cols == end_tag[:, None]).to(ACC)
            tl.store(end_grad_ptr + b[:, None] * num_tags + cols, edge * weight,
                     mask=live & (on & (t == last))[:, None])
        if HAS_TAGS:
            p -= (cols == gold[:, None]).to(ACC)
        p = tl.where(on[:, None], p, 0.0) * weight
        tl.store(out_ptr + r[:, None] * num_tags + cols, round_to(p, out_ptr.dtype.element_ty),
                 mask=live)
        if EDGES:
            tl.store(start_grad_ptr + b[:, None] * num_tags + cols, p,
                     mask=live & (t == 0)[:, None])


@triton.jit
def _crf_transition_kernel(
    emissions_ptr, stride_eb, stride_et, stride_ek,
    transitions_ptr, stride_ti, stride_tj,
    state_ptr,  # (2, B, T, K) contiguous
    carry_ptr,  # (2, B, T, K) contiguous, when TANGENT
    tags_ptr, stride_gb, stride_gt,  # when HAS_TAGS
    mask_ptr, stride_mb, stride_mt, last_ptr,
    pair_shift_ptr, expected_ptr,  # (B, T): Q_t, and E[G] when TANGENT
    partial_ptr,  # (programs, K, K) contiguous: each program's sum over its steps
    weight_hi, weight_lo,
    batch, num_steps, num_tags,
    share,  # steps per program, of the batch's steps in order (b, t)
    sequence_span,  # steps a sequence takes in that order: T, or T rounded up to whole shares
    ACC: tl.constexpr, TILE: tl.constexpr, HAS_TAGS: tl.constexpr, TANGENT: tl.constexpr,
):
    num_tiles = (num_tags + TILE - 1) // TILE
    row_tile = tl.program_id(0) // num_tiles
    col_tile = tl.program_id(0) % num_tiles
    program = tl.program_id(1)
    k = tl.arange(0, TILE)
    rows = row_tile * TILE + k
    cols = col_tile * TILE + k
    rvalid = rows < num_tags
    cvalid = cols < num_tags
    block = tl.load(transitions_ptr + rows[:, None] * stride_ti + cols[None, :] * stride_tj,
                    mask=rvalid[:, None] & cvalid[None, :], other=float("-inf")).to(ACC)
    num_cells = batch * num_steps * num_tags
    acc = tl.full((TILE, TILE), 0, dtype=ACC)
    begin = program * share
    end = tl.minimum(begin + share, batch * sequence_span)
    for sequence in range(begin // sequence_span, (end - 1) // sequence_span + 1):
        b = tl.cast(sequence, tl.int64)
        alpha_row = state_ptr + b * num_steps * num_tags
        carry_row = carry_ptr + b * num_steps * num_tags
        first = tl.maximum(begin - b * sequence_span, 1)  # no transition enters step 0
        # pointers at step t (and t - 1), moved by one step each iteration
        mask_t = mask_ptr + b * stride_mb + first * stride_mt
        prev_t = alpha_row + (first - 1) * num_tags + rows
        beta_t = alpha_row + num_cells + first * num_tags + cols
        emit_t = emissions_ptr + b * stride_eb + first * stride_et + cols * stride_ek
        carry_prev_t = carry_row + (first - 1) * num_tags + rows
        carry_t = carry_row + num_cells + first * num_tags + cols
        shift_t = pair_shift_ptr + b * num_steps + first
        expected_t = expected_ptr + b * num_steps + first
        tags_t = tags_ptr + b * stride_gb + first * stride_gt
        for t in range(first, tl.minimum(end - b * sequence_span, tl.load(last_ptr + b) + 1)):
            on = tl.load(mask_t) != 0
            rlive = tl.where(on, rvalid, False)
            clive = tl.where(on, cvalid, False)
            prev = tl.load(prev_t, mask=rlive, other=float("-inf"))
            ahead = (tl.load(beta_t, mask=clive, other=float("-inf"))
                     + tl.load(emit_t, mask=clive, other=float("-inf")).to(ACC))
            pair_shift = tl.load(shift_t, mask=on, other=0.0)
            xi = tl.exp(prev[:, None] + block + ahead[None, :] - pair_shift)
            if TANGENT:
                expected = tl.load(expected_t, mask=on, other=0.0)
                before = tl.load(carry_prev_t, mask=rlive, other=0.0)
                after = tl.load(carry_t, mask=clive, other=0.0)
                xi *= before[:, None] + after[None, :] - expected
            if HAS_TAGS:
                prev_gold = tl.load(tags_t - stride_gt, mask=on, other=-1)
                this_gold = tl.load(tags_t, mask=on, other=-1)
                xi -= ((rows[:, None] == prev_gold) & (cols[None, :] == this_gold)).to(ACC)
            acc += tl.where(on, xi, 0.0)
            mask_t += stride_mt
            prev_t += num_tags
            beta_t += num_tags
            emit_t += stride_et
            carry_prev_t += num_tags
            carry_t += num_tags
            shift_t += 1
            expected_t += 1
            tags_t += stride_gt
    weight = tl.cast(weight_hi, ACC) + weight_lo
    partial = partial_ptr + program.to(tl.int64) * num_tags * num_tags
    tl.store(partial + rows[:, None] * num_tags + cols[None, :], acc * weight,
             mask=rvalid[:, None] & cvalid[None, :])


@triton.jit
def _crf_viterbi_kernel(
    emissions_ptr, stride_eb, stride_et, stride_ek,
    transitions_ptr, stride_ti, stride_tj,
    start_ptr, stride_s, end_ptr, stride_e,
    mask_ptr, stride_mb, stride_mt,  # (B, T) uint8, 0 where a step is off (strides 0: all on)
    last_ptr,  # (B,) int64: each sequence's last step that is on
    lengths_ptr,  # (B,) int64: the mask's row sums L, >= 1
    score_ptr,  # (B,) best path score
    scores_ptr,  # (B, 2, K) contiguous: the running scores, two slots, unless SINGLE_TILE
    backpointer_ptr,  # (B, T, K) int32 contiguous scratch: best previous tag per (t >= 1, tag)
    best_tags_ptr,  # (B, T) int64 contiguous: the best path, -1 past L
    num_steps, num_tags,
    ACC: tl.constexpr, TILE: tl.constexpr, SINGLE_TILE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, TILE)
    num_tiles = (num_tags + TILE - 1) // TILE
    last = tl.load(last_ptr + b)
    length = tl.load(lengths_ptr + b)
    emit_row = emissions_ptr + b * stride_eb
    mask_row = mask_ptr + b * stride_mb
    scores_row = scores_ptr + b * 2 * num_tags
    pointer_row = backpointer_ptr + b * num_steps * num_tags
    tags_row = best_tags_ptr + b * num_steps
    if SINGLE_TILE:
        valid = k < num_tags
        trans = tl.load(transitions_ptr + k[:, None] * stride_ti + k[None, :] * stride_tj,
                        mask=valid[:, None] & valid[None, :], other=float("-inf")).to(ACC)

    score = tl.full((TILE,), 0, dtype=ACC)  # the running scores (registers, SINGLE_TILE)
    for jt in range(0, num_tiles):
        cols = jt * TILE + k
        cvalid = cols < num_tags
        score = (tl.load(start_ptr + cols * stride_s, mask=cvalid, other=float("-inf")).to(ACC)
                 + tl.load(emit_row + cols * stride_ek, mask=cvalid, other=float("-inf")).to(ACC))
        if not SINGLE_TILE:
            tl.store(scores_row + cols, score, mask=cvalid)
    if not SINGLE_TILE:
        tl.debug_barrier()
    # step t + 1's mask bit (and with one tile its emission row) load during step t, as in the
    # sweeps; a tile of a wider K loads its emissions before its reductions
    ahead_mask = tl.load(mask_row + stride_mt, mask=last >= 1, other=0)
    if SINGLE_TILE:
        ahead_emit = tl.load(emit_row + stride_et + k * stride_ek,
                             mask=tl.where(last >= 1, valid, False), other=float("-inf")).to(ACC)
    for t in range(1, last + 1):
        on = ahead_mask != 0
        live = t < last
        ahead_mask = tl.load(mask_row + (t + 1) * stride_mt, mask=live, other=0)
        if SINGLE_TILE:
            emit = ahead_emit
            ahead_emit = tl.load(emit_row + (t + 1) * stride_et + k * stride_ek,
                                 mask=tl.where(live, valid, False), other=float("-inf")).to(ACC)
        scores_in = scores_row + ((t - 1) % 2) * num_tags
        new_score = score
        for jt in range(0, num_tiles):
            cols = jt * TILE + k
            cvalid = cols < num_tags
            if not SINGLE_TILE:
                emit = tl.load(emit_row + t * stride_et + cols * stride_ek, mask=cvalid,
                               other=float("-inf")).to(ACC)
            best = tl.full((TILE,), float("-inf"), dtype=ACC)
            previous = tl.full((TILE,), 0, dtype=tl.int32)
            for it in range(0, num_tiles):
                rows = it * TILE + k
                if SINGLE_TILE:
                    prev = score
                    block = trans
                else:
                    rvalid = rows < num_tags
                    prev = tl.load(scores_in + rows, mask=rvalid, other=float("-inf"))
                    block = tl.load(transitions_ptr + rows[:, None] * stride_ti
                                    + cols[None, :] * stride_tj,
                                    mask=rvalid[:, None] & cvalid[None, :],
                                    other=float("-inf")).to(ACC)
                step = prev[:, None] + block + emit[None, :]  # the reference's order of additions
                tile_best = tl.max(step, axis=0)
                # lowest maximising from-tag (padding rows are -inf, so a real row ties first);
                # a later tile takes over only when strictly better
                tile_previous = tl.min(tl.where(step == tile_best[None, :], rows[:, None],
                                                num_tags + TILE), axis=0)
                better = tile_best > best
                previous = tl.where(better, tile_previous, previous)
                best = tl.where(better, tile_best, best)
            tl.store(pointer_row + t * num_tags + cols, previous, mask=cvalid)
            if SINGLE_TILE:
                new_score = tl.where(on, best, score)
            else:
                old = tl.load(scores_in + cols, mask=cvalid, other=float("-inf"))
                tl.store(scores_row + (t % 2) * num_tags + cols, tl.where(on, best, old),
                         mask=cvalid)
        score = new_score
        if not SINGLE_TILE:
            tl.debug_barrier()
    best = tl.full([], float("-inf"), dtype=ACC)
    tag = tl.full([], 0, dtype=tl.int32)
    for jt in range(0, num_tiles):
        cols = jt * TILE + k
        cvalid = cols < num_tags
        if SINGLE_TILE:
            final = score
        else:
            final = tl.load(scores_row + (last % 2) * num_tags + cols, mask=cvalid,
                            other=float("-inf"))
        final += tl.load(end_ptr + cols * stride_e, mask=cvalid, other=float("-inf")).to(ACC)
        tile_best = tl.max(final, axis=0)
        tile_tag = tl.min(tl.where(final == tile_best, cols, num_tags + TILE), axis=0)
        better = tile_best > best
        tag = tl.where(better, tile_tag, tag)
        best = tl.where(better, tile_best, best)
    tl.store(score_ptr + b, best)

    tl.debug_barrier()  # the backpointers stored above are read back by other threads
    tl.store(tags_row + length - 1, tag.to(tl.int64))
    for s in range(0, length - 1):
        t = length - 1 - s
        tag = tl.load(pointer_row + t * num_tags + tag)
        tl.store(tags_row + t - 1, tag.to(tl.int64))
    for t in range(length, num_steps):
        tl.store(tags_row + t, -1)


@triton.jit
def _crf_steps_kernel(
    mask_ptr, stride_mb, stride_mt,  # (B, T) uint8, 0 where a step is off (strides 0: all on)
    tags_ptr, stride_gb, stride_gt,  # (B, T) int64 gold tags, in [-K, K) where read; HAS_TAGS
    last_ptr, lengths_ptr,  # (B,) int64, written: the last step that is on, and L, how many are
    wrapped_ptr,  # (B, T) int64, written: the tags in [0, K) where read, 0 elsewhere; HAS_TAGS
    end_tags_ptr,  # (B,) int64, written: the wrapped tag of step L - 1 (step 0 if L = 0); HAS_TAGS
    verdict_ptr,  # (2,) int32 ones, cleared where the first step is off ([0], CHECK_MASK) and
    # where a tag read is out of range ([1], CHECK_TAGS)
    num_steps, num_tags,
    BLOCK: tl.constexpr, HAS_TAGS: tl.constexpr, CHECK_MASK: tl.constexpr,
    CHECK_TAGS: tl.constexpr,
):
    # kernel 0 of the module header: one program per sequence, two sweeps of its row
    b = tl.program_id(0).to(tl.int64)
    mask_row = mask_ptr + b * stride_mb
    t = tl.arange(0, BLOCK)
    count = tl.zeros([], tl.int64)
    last = tl.zeros([], tl.int64)
    for start in range(0, num_steps, BLOCK):
        on = tl.load(mask_row + (start + t) * stride_mt, mask=start + t < num_steps, other=0) != 0
        count += tl.sum(on.to(tl.int64), axis=0)
        last = tl.maximum(last, tl.max(tl.where(on, start + t, 0), axis=0).to(tl.int64))
    tl.store(last_ptr + b, last)
    tl.store(lengths_ptr + b, count)
    if CHECK_MASK:
        tl.store(verdict_ptr, 0, mask=tl.load(mask_row) == 0)
    if HAS_TAGS:
        end_step = tl.maximum(count, 1) - 1
        for start in range(0, num_steps, BLOCK):
            s = start + t
            inside = s < num_steps
            on = tl.load(mask_row + s * stride_mt, mask=inside, other=0) != 0
            on_next = tl.load(mask_row + (s + 1) * stride_mt, mask=s + 1 < num_steps, other=0) != 0
            read = inside & (on | on_next | (s == end_step))
            tag = tl.load(tags_ptr + b * stride_gb + s * stride_gt, mask=read, other=0)
            in_range = (tag >= -num_tags) & (tag < num_tags)
            if CHECK_TAGS:
                tl.store(verdict_ptr + 1 + 0 * s, 0, mask=read & ~in_range)
            wrapped = tl.where(read & in_range, tl.where(tag < 0, tag + num_tags, tag), 0)
            tl.store(wrapped_ptr + b * num_steps + s, wrapped, mask=inside)
            tl.store(end_tags_ptr + b + 0 * s, wrapped, mask=inside & (s == end_step))


# --- launchers -----------------------------------------------------------------------------

def _result_dtype(*tensors):
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors])


@dataclasses.dataclass
class _Steps:
    """Which steps of each sequence are on, and the gold tags, as the kernels read them (all on
    device, no sync): `_crf_steps_kernel`'s outputs."""
    mask: torch.Tensor  # (B, T) uint8; strides 0 when every step is on
    last: torch.Tensor  # (B,) int64: the last step that is on
    lengths: torch.Tensor  # (B,) int64: the number of steps that are on, L
    tags: torch.Tensor | None  # (B, T) int64 in [0, K) where the gold score reads them, else 0
    end_tags: torch.Tensor | None  # (B,) int64: tags[b, L-1], the gold end transition's tag

    @classmethod
    def of(cls, emissions, mask, tags=None, mask_error=None, tag_error=None):
        """mask_error, tag_error: the messages of the value checks this launch records, where
        they are the call's (CUDA); one assert is queued on each verdict."""
        batch, num_steps, num_tags = emissions.shape
        device = emissions.device
        if mask is None:
            mask = torch.ones((1, 1), dtype=torch.uint8, device=device).expand(batch, num_steps)
        mask = mask.view(torch.uint8)
        last, lengths = (torch.empty(batch, dtype=torch.int64, device=device) for _ in "ll")
        wrapped = end_tags = verdicts = last  # placeholders where not wanted
        if tags is not None:
            wrapped = torch.empty((batch, num_steps), dtype=torch.int64, device=device)
            end_tags = torch.empty(batch, dtype=torch.int64, device=device)
        checks = [(index, message) for index, message in enumerate((mask_error, tag_error))
                  if message is not None]
        if checks:
            verdicts = torch.ones(2, dtype=torch.int32, device=device)
        if batch > 0:
            _crf_steps_kernel[(batch,)](
                mask, *mask.stride(), *((tags, *tags.stride()) if tags is not None else (last, 0, 0)),
                last, lengths, wrapped, end_tags, verdicts, num_steps, num_tags,
                BLOCK=min(triton.next_power_of_2(num_steps), 1024), HAS_TAGS=tags is not None,
                CHECK_MASK=mask_error is not None, CHECK_TAGS=tag_error is not None)
        for index, message in checks:  # queued: no host sync (the CPU checks before any launch)
            torch._assert_async(verdicts[index], message)
        if tags is None:
            return cls(mask, last, lengths, None, None)
        return cls(mask, last, lengths, wrapped, end_tags)


@dataclasses.dataclass
class _Problem:
    """One call's tensors and launch sizes, shared by its kernels."""
    emissions: torch.Tensor
    transitions: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    steps: _Steps
    acc: torch.dtype

    @property
    def shape(self):
        return self.emissions.shape

    @property
    def tile(self):
        return _tag_tile(self.shape[2])

    @property
    def single_tile(self):
        return _in_registers(self.shape[2])

    @property
    def tags(self):
        return self.steps.tags  # None for log Z and the marginals

    def buffer(self, *shape, dtype=None):
        return torch.empty(shape, dtype=dtype or self.acc, device=self.emissions.device)

    def tag_args(self):
        """(tags, strides, end tags) for the kernels; placeholders without tags."""
        if self.tags is None:
            return self.steps.lengths, 0, 0, self.steps.lengths
        return self.tags, *self.tags.stride(), self.steps.end_tags


def _sweeps(problem, store_all, tangent=None):
    """Kernel 1 (module header): (per-sequence NLL or log Z, the states (2, B, T, K), enter_t
    (B, T), the carries (2, B, T, K) when `tangent`); alpha alone without store_all."""
    batch, num_steps, num_tags = problem.shape
    out = problem.buffer(batch)
    state_steps = num_steps if store_all else 2
    state = problem.buffer(2 if store_all else 1, batch, state_steps, num_tags)
    enter = problem.buffer(batch, num_steps) if store_all else out
    carry = problem.buffer(2, batch, num_steps, num_tags) if tangent is not None else out
    if batch > 0:
        tile = problem.tile
        e, t, s, n = problem.emissions, problem.transitions, problem.start, problem.end
        _crf_sweep_kernel[(batch, 2 if store_all else 1)](
            e, *e.stride(), *problem.tag_args(),
            t, *t.stride(), s, s.stride(0), n, n.stride(0),
            problem.steps.mask, *problem.steps.mask.stride(), problem.steps.last,
            *((tangent, *tangent.stride()) if tangent is not None else (e, 0, 0, 0)),
            out, state, enter, carry,
            batch, num_steps, num_tags, state_steps,
            ACC=triton_accumulation(problem.acc), TILE=tile, SINGLE_TILE=problem.single_tile,
            HAS_TAGS=problem.tags is not None, STORE_ALL=store_all, TANGENT=tangent is not None,
            num_warps=_tag_warps(tile))
    return out, state, enter, carry


def _marginals(problem, swept, out, weight, pairs, edges, tangent=None):
    """Kernel 2 into `out` (B, T, K): (start, end gradient partials (B, 1, K) when `edges`,
    Q_t and E[G] (B, T) when `pairs`)."""
    batch, num_steps, num_tags = problem.shape
    _, state, enter, carry = swept
    start_grad, end_grad = (problem.buffer(batch, 1, num_tags) if edges else out for _ in "se")
    pair_shift, expected = (problem.buffer(batch, num_steps) if pairs else out for _ in "qe")
    if batch > 0:
        tile = problem.tile
        rows = max(1, _MARGINAL_ELEMENTS // tile)
        steps = problem.steps
        _crf_marginal_kernel[(triton.cdiv(batch * num_steps, rows),)](
            state, carry,
            *((tangent, *tangent.stride()) if tangent is not None else (out, 0, 0, 0)),
            *problem.tag_args(), steps.mask, *steps.mask.stride(), steps.last,
            enter, pair_shift, expected, out, start_grad, end_grad, *fp32_pair(weight),
            batch, num_steps, num_tags,
            ACC=triton_accumulation(problem.acc), TILE=tile, ROWS=rows,
            SINGLE_TILE=problem.single_tile, HAS_TAGS=problem.tags is not None,
            TANGENT=tangent is not None, PAIRS=pairs, EDGES=edges,
            num_warps=max(1, min(8, rows * tile // 256)))
    return start_grad, end_grad, pair_shift, expected


def _transition_chunks(batch, num_steps, tile_pairs):
    """Time chunks per sequence for kernel 3 with per-sequence partials: enough programs to fill
    the GPU, each summing at least 8 steps (its partial costs a K x K store and a read in the
    final sum)."""
    if not GPU_LAUNCH_PARAMS:
        return min(2, num_steps)
    wanted = triton.cdiv(_TRANSITION_PROGRAMS, max(batch * tile_pairs, 1))
    return max(1, min(wanted, triton.cdiv(num_steps, 8)))


def _transition_work(batch, num_steps, tile_pairs, per_sequence):
    """Kernel 3's split of the batch's steps, taken in order (b, t): (programs per tile pair,
    steps per program, steps per sequence in that order). Per sequence (reduction='none', whose
    grad_output scales each sequence's partial) a program takes one time chunk of one sequence,
    B x chunks partials; otherwise a fixed number of programs (about two per SM over all tile
    pairs; two under the interpreter, so the tests cross sequences) shares all the steps, so the
    partials do not grow with B."""
    if per_sequence:
        chunks = _transition_chunks(batch, num_steps, tile_pairs)
        share = triton.cdiv(num_steps, chunks)
        return batch * chunks, share, share * chunks
    steps = batch * num_steps
    wanted = triton.cdiv(_TRANSITION_PROGRAMS, tile_pairs) if GPU_LAUNCH_PARAMS else 2
    share = max(1, triton.cdiv(steps, max(1, min(wanted, triton.cdiv(steps, 8)))))
    return triton.cdiv(steps, share), share, num_steps


def _transition_partials(problem, swept, pair_shift, expected, weight, per_sequence,
                         tangent=False):
    """Kernel 3: partial sums of the transition gradient, (B, chunks * K, K) per sequence,
    else (programs, K, K)."""
    batch, num_steps, num_tags = problem.shape
    _, state, _, carry = swept
    tile = problem.tile
    tiles = triton.cdiv(num_tags, tile)
    programs, share, sequence_span = _transition_work(batch, num_steps, tiles * tiles,
                                                      per_sequence)
    partials = problem.buffer(programs, num_tags, num_tags)
    if batch > 0:
        e, t, steps = problem.emissions, problem.transitions, problem.steps
        tags, stride_gb, stride_gt, _ = problem.tag_args()
        _crf_transition_kernel[(tiles * tiles, programs)](
            e, *e.stride(), t, *t.stride(), state, carry, tags, stride_gb, stride_gt,
            steps.mask, *steps.mask.stride(), steps.last, pair_shift,
            pair_shift if expected is None else expected, partials,
            *fp32_pair(weight), batch, num_steps, num_tags, share, sequence_span,
            ACC=triton_accumulation(problem.acc), TILE=tile, HAS_TAGS=problem.tags is not None,
            TANGENT=tangent, num_warps=_tag_warps(tile))
    if per_sequence:  # as the per-sequence grad_output broadcasts against it
        return partials.view(batch, programs // max(batch, 1) * num_tags, num_tags)
    return partials


def _summed_tiles(partials, dtype):
    """The transition gradient from its partials (..., K, K), summed in torch's fixed order,
    then cast."""
    num_tags = partials.shape[2]
    return partials.reshape(-1, num_tags, num_tags).sum(0).to(dtype)


def _summed_rows(partials, dtype):
    """A (K,) gradient from its (B, 1, K) per-sequence partials."""
    return partials.sum((0, 1)).to(dtype)


class _Finish:
    """The NLL's gradients as autograd receives them (Sweep.finish): the emissions' as written,
    the parameters' summed over their partials and cast to each parameter's dtype."""

    def __init__(self, dtypes):
        self.dtypes = dtypes

    def __call__(self, index, grad):
        if index == 0:
            return grad
        summed = _summed_tiles if index == 1 else _summed_rows
        return summed(grad, self.dtypes[index])


def _per_sequence(grad_output):
    """reduction='none': each sequence's grad_output against its (B, ...) gradients."""
    return grad_output.reshape(-1, 1, 1)


def crf_nll(emissions, tags, transitions, start_transitions, end_transitions, mask=None,
            reduction="mean", queued_mask_error=None, queued_tag_error=None):
    """queued_mask_error, queued_tag_error: where the value checks are the call's (CUDA), their
    messages: the steps kernel records them as it reads the mask and the tags (_Steps.of)."""
    needs = wanted_gradients(emissions, transitions, start_transitions, end_transitions)
    steps = _Steps.of(emissions, mask, tags, queued_mask_error, queued_tag_error)
    # the kernels write the gradients of the reduced loss: the mean's 1/B is folded in there
    weight = 1.0 / max(emissions.shape[0], 1) if reduction == "mean" else 1.0

    def sweep(emissions, transitions, start, end):
        dtype = _result_dtype(emissions, transitions, start, end)
        problem = _Problem(emissions, transitions, start, end, steps,
                           accumulation_dtype(dtype))
        swept = _sweeps(problem, store_all=any(needs))
        nll = swept[0]
        grads = [None] * 4
        if any(needs):
            emissions_grad = torch.empty(emissions.shape, dtype=emissions.dtype,
                                         device=emissions.device)
            start_grad, end_grad, pair_shift, _ = _marginals(
                problem, swept, emissions_grad, weight, pairs=needs[1], edges=needs[2] or needs[3])
            transitions_grad = None
            if needs[1]:
                transitions_grad = _transition_partials(problem, swept, pair_shift, None, weight,
                                                        per_sequence=reduction == "none")
            grads = [emissions_grad if needs[0] else None, transitions_grad,
                     start_grad if needs[2] else None, end_grad if needs[3] else None]
        loss = reduce(nll, reduction).to(loss_dtype(dtype, nll.device))
        return Sweep((loss,), grads,
                     shape_grad_output=_per_sequence if reduction == "none" else (lambda g: g),
                     finish=_Finish([x.dtype for x in (emissions, transitions, start, end)]))
    return precomputed_gradient(sweep, emissions, transitions, start_transitions,
                                     end_transitions)


class _CRFMarginals(torch.autograd.Function):
    """Forward: the sweeps and the marginals kernel. Backward: the same kernels' tangent mode."""

    @staticmethod
    def forward(ctx, emissions, transitions, start, end, steps):
        dtype = _result_dtype(emissions, transitions, start, end)
        problem = _Problem(emissions, transitions, start, end, steps,
                           accumulation_dtype(dtype))
        marginals = torch.empty(emissions.shape, dtype=loss_dtype(dtype, emissions.device),
                                device=emissions.device)
        _marginals(problem, _sweeps(problem, store_all=True), marginals, 1.0, pairs=False,
                   edges=False)
        ctx.save_for_backward(emissions, transitions, start, end)
        ctx.steps, ctx.acc = steps, problem.acc
        return marginals

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        emissions, transitions, start, end = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        problem = _Problem(emissions, transitions, start, end, ctx.steps, ctx.acc)
        swept = _sweeps(problem, store_all=True, tangent=grad_output)
        emissions_grad = torch.empty(emissions.shape, dtype=emissions.dtype,
                                     device=emissions.device)
        start_grad, end_grad, pair_shift, expected = _marginals(
            problem, swept, emissions_grad, 1.0, pairs=needs[1], edges=needs[2] or needs[3],
            tangent=grad_output)
        transitions_grad = None
        if needs[1]:
            transitions_grad = _summed_tiles(_transition_partials(
                problem, swept, pair_shift, expected, 1.0, per_sequence=False, tangent=True),
                transitions.dtype)
        return (emissions_grad if needs[0] else None, transitions_grad,
                _summed_rows(start_grad, start.dtype) if needs[2] else None,
                _summed_rows(end_grad, end.dtype) if needs[3] else None, None)


def crf_marginals(emissions, transitions, start_transitions, end_transitions, mask=None,
                  queued_mask_error=None):
    """queued_mask_error: as crf_nll's."""
    return _CRFMarginals.apply(emissions, transitions, start_transitions, end_transitions,
                               _Steps.of(emissions, mask, mask_error=queued_mask_error))


def crf_decode(emissions, transitions, start_transitions, end_transitions, mask=None,
               queued_mask_error=None):
    """queued_mask_error: as crf_nll's."""
    batch, num_steps, num_tags = emissions.shape
    dtype = _result_dtype(emissions, transitions, start_transitions, end_transitions)
    acc = accumulation_dtype(dtype)
    device = emissions.device
    scores = torch.empty(batch, dtype=acc, device=device)
    best_tags = torch.empty((batch, num_steps), dtype=torch.int64, device=device)
    if batch > 0:
        tile = _tag_tile(num_tags)
        single_tile = _in_registers(num_tags)
        steps = _Steps.of(emissions, mask, mask_error=queued_mask_error)
        running = torch.empty((batch, 2, num_tags) if not single_tile else (0,), dtype=acc,
                              device=device)
        backpointers = torch.empty((batch, num_steps, num_tags), dtype=torch.int32, device=device)
        _crf_viterbi_kernel[(batch,)](
            emissions, *emissions.stride(), transitions, *transitions.stride(),
            start_transitions, start_transitions.stride(0),
            end_transitions, end_transitions.stride(0),
            steps.mask, *steps.mask.stride(), steps.last, steps.lengths,
            scores, running if running.numel() else scores, backpointers, best_tags,
            num_steps, num_tags,
            ACC=triton_accumulation(acc), TILE=tile, SINGLE_TILE=single_tile,
            num_warps=_tag_warps(tile),
        )
    return scores.to(loss_dtype(dtype, scores.device)), best_tags


KERNELS = {
    "crf_nll": crf_nll,
    "crf_decode": crf_decode,
    "crf_marginals": crf_marginals,
}
