"""CTC loss kernels: `ctc_loss` on log-probabilities and `ctc_loss_with_logits` with the
log-softmax fused in. The forward computes the loss and its gradient; the backward only scales.

Extended labels. A target l_1..l_L becomes b l_1 b l_2 ... l_L b: 2L+1 states, blanks at even
states, labels at odd ones. An alignment stays, moves one state per frame, or skips the blank
between two different labels.

Four launches, each as parallel as its work allows:
  states    `_states_kernel`, one program per sequence: the extended labels (N, 2S+1) from the
            padded targets, and with a gradient the byte map of the classes they hold (below);
            where the label range check is the call's (CUDA), it records it as it reads the
            labels: one verdict, one queued assert, no pass of torch ops over the targets.
  stats     (logits only) `_frame_stats_kernel`, one program per (t, n) frame: the frame's max
            and log-sum-exp, (T, N, 2), from which every emission log p_t(c) follows.
  recursions  `_recursion_kernel`, 2N programs: program (n, 0) runs alpha forward in time,
            program (n, 1) runs beta backward, concurrently; without a gradient only alpha runs.
            Both are one recursion mirrored (beta reads the states and frames in reverse):
            r_t(s) = emit_t(s) + lse(r_{t-1}(s), r_{t-1}(s -+ 1), r_{t-1}(s -+ 2) where the skip is
            allowed), in log space; the lse maps all -inf to -inf, never NaN. Both include frame
            t's emission, so the posterior of state s at frame t is alpha + beta - emit,
            normalised over the states. The states are held as pairs (blank 2k, label 2k+1):
            every blank emits one value per frame (one load), and the only shifted value a frame
            needs is the label before the pair, which the blank steps from and the label skips
            from. With a gradient each program writes its history (N, T, 2S+1) in fp32 (fp64
            for fp64), which only the gradient kernel reads. Where one tile holds every pair
            (S + 1 <= MAX_STATE_TILE / 2), the values stay in registers between frames and the
            shifted value is a one-lane shift of the labels (`tl.gather`: warp shuffles within
            one warp, shared memory across warps), so a frame's critical path has no global
            round trip (and within one warp no barrier), and the next frame's emissions load
            during this frame's arithmetic; without a gradient nothing is stored. Longer label
            lengths are swept in tiles of MAX_STATE_TILE states: a frame's tiles only read the
            previous frame, whose row (of the history, or of two alternating rows without a
            gradient) they read back after a barrier that makes it visible to every thread, so
            any label length runs.
  gradient  `_gradient_kernel`, fully parallel over (time, batch): a program takes
            GRADIENT_FRAMES frames of one sequence (reading its sorted states once for all).
            Each element of a frame's gradient row is written once: a dense sweep writes the
            classes no state owns (0, or the softmax for logits, times the reduction's factor;
            every class for frames outside the input), skipping the states' classes by a
            (N, C + 1) byte map the states kernel scatters (read once per program when the
            row fits one block), and each state's class gets
            -(sum of the posteriors of the states of that class) (softmax - that sum for
            logits: the chain rule through log_softmax); the two sets are disjoint, so no
            barrier orders them. Several states
            share a class (every blank, repeated labels) and the sum must be deterministic,
            without atomics: the states are sorted by class once per sequence (a stable
            torch.sort in the launcher, no sync), each frame gathers alpha, beta and the emission
            in that order, a segmented associative scan sums each run of equal classes (carried
            across state tiles), and the last state of a run writes its class: O(S log S) per
            frame for any vocabulary. With several state tiles the normaliser takes a first
            sweep (online max and sum), the second recomputes the posteriors. Frames past the
            input and sequences with no alignment (infinite loss) get gradient 0. Beside the
            gradient it reads only the two histories and one emission per state.
  scaling   Every vector is kept near 0, so differences between states never round at the scale
            of the loss or of a 1e4 logit (log-space CTC in fp32 otherwise loses ~ulp(loss) in
            every posterior): each frame's emissions enter relative to their max over the
            states (a first sweep over the tiles finds it when there are several; stored per
            frame for the gradient kernel), and r_t is computed minus the max of r_{t-1}; the
            constants add up in `log_scale`, and loss = -(log_scale + lse(r at the last blank and
            last label)). A frame constant cancels in the posteriors, so beta drops its own.
Reduction. 'sum' and 'mean' (each loss over max(L, 1), then the batch mean) are taken inside the
autograd Function: the alpha program writes each loss as reduced (over max(L, 1), zeroed where
infinite with zero_infinity), the batch sum and its 1/N are two torch ops, and the per-sequence
factor is folded into the gradient kernel's store, so a
`loss.backward()` hands the shared precomputed-gradient backward a grad_output of exactly 1 and
the gradient is never touched again; 'none' scales each sequence's rows by its grad_output.
zero_infinity zeroes infinite losses (their gradient is 0 either way; the gradient kernel reads
the raw loss to find them).

Host syncs: none. Targets arrive as padded (N, S) rows (functional.py pads concatenated targets
to the longest length, which its one read of the lengths already knows).
"""
import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import (accumulation_dtype, round_to, row_block, row_warps, step_row,
                      triton_accumulation)
from ._math import logsumexp3, subtract_max
from .._autocast import loss_dtype
from ._precomputed_gradient import Sweep, precomputed_gradient, wanted_gradients

# Most extended-label states one program holds at a time; longer state vectors are swept in
# tiles. Tests lower it to run the tiled sweeps at small label lengths.
MAX_STATE_TILE = 1024
# Frames of one sequence per gradient program (which reads the sequence's sorted states once):
# T = 1000, N = 32 still makes 2000 programs.
GRADIENT_FRAMES = 16


@triton.jit
def _segmented_add(value_a, start_a, value_b, start_b):
    # scan operator of a sum that restarts where a segment starts (start flag 1)
    return tl.where(start_b != 0, value_b, value_a + value_b), start_a | start_b


@triton.jit
def _pairs(ext_row, k, target_length, backward, x_stride_c):
    """The states of pairs k (reversed for beta): blank 2k and label 2k+1 in sweep order, and
    the label 2k-1 before them, whose value is the one shifted read a frame makes: the blank
    steps from it, the label skips from it (where the two labels differ)."""
    num_states = 2 * target_length + 1
    blank_valid = k <= target_length
    label_valid = k < target_length
    blank_state = tl.where(backward != 0, num_states - 1 - 2 * k, 2 * k)
    label_state = tl.where(backward != 0, num_states - 2 - 2 * k, 2 * k + 1)
    before_state = tl.where(backward != 0, num_states - 2 * k, 2 * k - 1)
    before_ok = blank_valid & (k >= 1)
    labels = tl.load(ext_row + label_state, mask=label_valid, other=0)
    before = tl.load(ext_row + before_state, mask=label_valid & before_ok, other=0)
    skip_ok = label_valid & before_ok & (labels != before)
    return (blank_state, label_state, before_state, blank_valid, label_valid, before_ok, skip_ok,
            labels * x_stride_c)


@triton.jit
def _emissions(x_frame, label_offsets, mask, ACC: tl.constexpr):
    # cast right after the load: the interpreter keeps bf16 as raw bits
    return tl.load(x_frame + label_offsets, mask=mask, other=float("-inf")).to(ACC)


@triton.jit
def _emission_offset(emission_max, stats_ptr, frame, ACC: tl.constexpr, LOGITS: tl.constexpr):
    """What the state-relative emissions of a frame leave out: their max, less the frame's
    statistics for logits (log p = z - max(z) - log sum exp(z - max(z)))."""
    if LOGITS:
        return (emission_max - tl.load(stats_ptr + 2 * frame).to(ACC)) \
            - tl.load(stats_ptr + 2 * frame + 1).to(ACC)
    return emission_max


@triton.jit
def _finite_max(r):
    """max over the states, 0 when all are -inf (nothing to take out)."""
    m = tl.max(r, axis=0)
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _advance(blank, label, before, blank_valid, label_valid, skip_ok, blank_emit, label_emit,
             previous_max):
    """A frame of the recursion at a tile of pairs, from the previous frame's values at the same
    states (blank, label) and at the label before each pair, less the previous frame's max."""
    blank, label, before = blank - previous_max, label - previous_max, before - previous_max
    neg_inf = float("-inf")
    new_blank = tl.where(blank_valid, logsumexp3(blank, before, neg_inf) + blank_emit, neg_inf)
    new_label = tl.where(label_valid, logsumexp3(label, blank, tl.where(skip_ok, before, neg_inf))
                         + label_emit, neg_inf)
    return new_blank, new_label


@triton.jit
def _recursion_kernel(
    x_ptr, x_stride_t, x_stride_n, x_stride_c,  # (T, N, C) log-probabilities, or logits
    stats_ptr,  # (T, N, 2) per frame: max and log sum exp(z - max) of the logits; with LOGITS
    ext_ptr,  # (N, W) extended labels (read only inside each sequence's 2L+1 states)
    input_lengths_ptr, target_lengths_ptr,  # (N,) int64
    history_ptr,  # (directions, N, rows, W): alpha rows, then beta's; W = 2S+1 states (unused
    # with one tile and no gradient)
    rows,  # T with a gradient (the whole history), else 2 alternating rows
    emission_max_ptr,  # (N, T) each frame's emission max over the states; with COMPUTE_GRAD
    loss_ptr,  # (N,) per-sequence loss, accumulation dtype
    reported_ptr,  # (N,) the loss as reported: 0 if infinite with zero_infinity, over max(L, 1)
    # with MEAN
    batch, width, blank_offset,  # blank_offset: the blank's class times the class stride
    zero_infinity,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, SINGLE_TILE: tl.constexpr,
    LOGITS: tl.constexpr, COMPUTE_GRAD: tl.constexpr, MEAN: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    backward = tl.program_id(1)  # 0: alpha, forward in time; 1: beta, backward
    direction = 1 - 2 * backward
    num_frames = tl.load(input_lengths_ptr + n)
    target_length = tl.load(target_lengths_ptr + n)
    num_pairs = target_length + 1  # the last one a blank alone
    ext_row = ext_ptr + n * width
    x_row = x_ptr + n * x_stride_n
    history = history_ptr + (backward * batch + n) * rows * width
    store_max = COMPUTE_GRAD and backward == 0
    k = tl.arange(0, BLOCK_P)
    neg_inf = tl.full([BLOCK_P], float("-inf"), ACC)

    # the sweep's first frame starts on its first blank and label; no frames leaves all mass on
    # state 0 (beta stores nothing then). Scalar conditions enter masks as lane limits.
    first = tl.where(backward != 0, num_frames - 1, 0)
    has_frames = num_frames > 0
    first_row = step_row(history, tl.maximum(first, 0), width, COMPUTE_GRAD)
    blank_state, label_state, _first_before, blank_valid, label_valid, before_ok, skip_ok, \
        label_offsets = _pairs(ext_row, k, target_length, backward, x_stride_c)
    x_first = x_row + first * x_stride_t
    blank_emit = tl.load(x_first + blank_offset, mask=has_frames, other=0.0).to(ACC)
    label_emit = _emissions(x_first, label_offsets,
                            k < tl.where(has_frames, tl.minimum(target_length, 1), 0), ACC)
    emission_max = _finite_max(tl.where(k == 0, tl.maximum(label_emit, blank_emit), neg_inf))
    blank = tl.where(k == 0, tl.where(has_frames, blank_emit - emission_max, 0.0), neg_inf)
    label = label_emit - emission_max
    log_scale = tl.where(has_frames, _emission_offset(emission_max, stats_ptr,
                                                      first * batch + n, ACC, LOGITS), 0.0)
    stored = tl.where(first >= 0, num_pairs, 0)  # pairs stored: beta with no frames stores none
    if COMPUTE_GRAD or not SINGLE_TILE:  # one tile without a gradient keeps no history
        tl.store(first_row + blank_state, blank, mask=k < stored)  # the tile of pair 0
        tl.store(first_row + label_state, label, mask=k < tl.minimum(stored, target_length))
    if not SINGLE_TILE:
        for start in range(BLOCK_P, num_pairs, BLOCK_P):
            tile_blank, tile_label, _, _, _, _, _, _ = _pairs(ext_row, start + k, target_length,
                                                              backward, x_stride_c)
            tl.store(first_row + tile_blank, neg_inf, mask=start + k < stored)
            tl.store(first_row + tile_label, neg_inf,
                     mask=start + k < tl.minimum(stored, target_length))
    if store_max & has_frames:
        tl.store(emission_max_ptr + n * rows, emission_max)
    previous_max = _finite_max(tl.maximum(blank, label))

    if SINGLE_TILE:  # the next frame's emissions in flight during this frame's arithmetic
        x_next = x_row + (first + direction) * x_stride_t
        next_blank_emit = tl.load(x_next + blank_offset, mask=num_frames > 1, other=0.0).to(ACC)
        next_label_emit = _emissions(x_next, label_offsets,
                                     k < tl.where(num_frames > 1, target_length, 0), ACC)
    for i in range(1, num_frames):
        t = first + i * direction
        frame_row = step_row(history, t, width, COMPUTE_GRAD)
        x_frame = x_row + t * x_stride_t
        if SINGLE_TILE:
            blank_emit, label_emit = next_blank_emit, next_label_emit
            x_next = x_frame + direction * x_stride_t
            next_blank_emit = tl.load(x_next + blank_offset, mask=i + 1 < num_frames,
                                      other=0.0).to(ACC)
            next_label_emit = _emissions(x_next, label_offsets,
                                         k < tl.where(i + 1 < num_frames, target_length, 0), ACC)
            emission_max = _finite_max(tl.where(k == 0, tl.maximum(blank_emit, label_emit),
                                                label_emit))
            # the label before each pair is the previous pair's label: a shift in registers
            before = tl.where(before_ok, tl.gather(label, tl.maximum(k - 1, 0), 0), neg_inf)
            blank, label = _advance(blank, label, before, blank_valid, label_valid, skip_ok,
                                    blank_emit - emission_max, label_emit - emission_max,
                                    previous_max)
            if COMPUTE_GRAD:
                tl.store(frame_row + blank_state, blank, mask=blank_valid)
                tl.store(frame_row + label_state, label, mask=label_valid)
            frame_max = _finite_max(tl.maximum(blank, label))
        else:
            previous_row = step_row(history, t - direction, width, COMPUTE_GRAD)
            blank_emit = tl.load(x_frame + blank_offset).to(ACC)
            emission_max = blank_emit
            for start in range(0, target_length, BLOCK_P):
                _, _, _, _, tile_label_valid, _, _, tile_offsets = _pairs(
                    ext_row, start + k, target_length, backward, x_stride_c)
                label_emit = _emissions(x_frame, tile_offsets, tile_label_valid, ACC)
                emission_max = tl.maximum(emission_max, tl.max(label_emit, axis=0))
            emission_max = tl.where(emission_max == float("-inf"), 0.0, emission_max)
            tl.debug_barrier()  # the previous frame stored by every thread before it is read
            frame_max = tl.full([], float("-inf"), ACC)
            for start in range(0, num_pairs, BLOCK_P):
                tile_blank, tile_label, tile_before, tile_blank_valid, tile_label_valid, \
                    tile_before_ok, tile_skip_ok, tile_offsets = _pairs(
                        ext_row, start + k, target_length, backward, x_stride_c)
                label_emit = _emissions(x_frame, tile_offsets, tile_label_valid, ACC)
                blank = tl.load(previous_row + tile_blank, mask=tile_blank_valid,
                                other=float("-inf"))
                label = tl.load(previous_row + tile_label, mask=tile_label_valid,
                                other=float("-inf"))
                before = tl.load(previous_row + tile_before, mask=tile_before_ok,
                                 other=float("-inf"))
                blank, label = _advance(blank, label, before, tile_blank_valid,
                                        tile_label_valid, tile_skip_ok, blank_emit - emission_max,
                                        label_emit - emission_max, previous_max)
                tl.store(frame_row + tile_blank, blank, mask=tile_blank_valid)
                tl.store(frame_row + tile_label, label, mask=tile_label_valid)
                frame_max = tl.maximum(frame_max, tl.max(tl.maximum(blank, label), axis=0))
            frame_max = tl.where(frame_max == float("-inf"), 0.0, frame_max)
        log_scale += previous_max + _emission_offset(emission_max, stats_ptr, t * batch + n,
                                                     ACC, LOGITS)
        if store_max:
            tl.store(emission_max_ptr + n * rows + t, emission_max)
        previous_max = frame_max

    # both sweeps end on their last two states (alpha: the last label and the final blank);
    # alpha's gives the loss
    final = 2 * target_length - tl.arange(0, 2)
    if SINGLE_TILE:  # still in registers: blank 2L of pair L, label 2L - 1 of pair L - 1
        final_blank = tl.max(tl.where(k == target_length, blank, neg_inf), axis=0)
        final_label = tl.max(tl.where(k == target_length - 1, label, neg_inf), axis=0)
        final_r = tl.where(final % 2 == 0, final_blank, final_label)
    else:
        tl.debug_barrier()
        last_row = step_row(history, tl.maximum(num_frames - 1, 0), width, COMPUTE_GRAD)
        final_r = tl.load(last_row + final, mask=final >= 0, other=float("-inf"))
    final_r, shift = subtract_max(final_r)
    loss = -(log_scale + shift + tl.log(tl.sum(tl.exp(final_r), axis=0)))
    tl.store(loss_ptr + n, loss, mask=backward == 0)  # the gradient kernel reads it raw
    reported = tl.where((zero_infinity != 0) & (loss == float("inf")), 0.0, loss)
    if MEAN:  # torch: each loss over its target length, then the batch mean
        reported = reported / tl.maximum(target_length, 1).to(ACC)
    tl.store(reported_ptr + n, reported, mask=backward == 0)


@triton.jit
def _sorted_states(order_row, sorted_row, q, width, num_classes):
    """At sorted positions q: the state, its class (num_classes past the 2L+1 states), whether
    it is one, and where the runs of a class start and end."""
    in_width = q < width
    order = tl.load(order_row + q, mask=in_width, other=0)
    classes = tl.load(sorted_row + q, mask=in_width, other=num_classes)
    previous_class = tl.load(sorted_row + q - 1, mask=in_width & (q >= 1), other=-1)
    next_class = tl.load(sorted_row + q + 1, mask=q + 1 < width, other=num_classes)
    is_label = classes < num_classes
    run_start = (classes != previous_class).to(tl.int32)
    return order, classes, is_label, run_start, is_label & (classes != next_class)


@triton.jit
def _scores(alpha_row, beta_row, x_frame, x_stride_c, emission_max, order, classes, is_label,
            ACC: tl.constexpr):
    """Each state's log posterior up to a frame constant (alpha + beta - emit), and its raw
    emission (the logit, for logits)."""
    alpha = tl.load(alpha_row + order, mask=is_label, other=float("-inf"))
    beta = tl.load(beta_row + order, mask=is_label, other=float("-inf"))
    emit = tl.load(x_frame + classes * x_stride_c, mask=is_label, other=0.0).to(ACC)
    # alpha and beta both hold the frame's emission: take it out once (-inf states stay -inf)
    reachable = (alpha != float("-inf")) & (beta != float("-inf"))
    return tl.where(reachable, alpha + beta - (emit - emission_max), float("-inf")), emit


@triton.jit
def _store_class_sums(score, score_max, score_sum, emit, classes, run_start, run_end, carry,
                      grad_row, weight, frame_max, log_sum, LOGITS: tl.constexpr):
    """Sum the posteriors of each run of a class (the run open at the tile's start continues
    `carry`), store its gradient at the run's end; returns the carry into the next tile."""
    posterior = tl.exp(score - score_max) / score_sum
    occupancy, _ = tl.associative_scan((posterior, run_start), 0, _segmented_add)
    occupancy = tl.where(tl.cumsum(run_start, 0) == 0, occupancy + carry, occupancy)
    if LOGITS:  # softmax - occupancy
        grad = tl.exp((emit - frame_max) - log_sum) - occupancy
    else:
        grad = -occupancy
    tl.store(grad_row + classes, round_to(grad * weight, grad_row.dtype.element_ty),
             mask=run_end)
    last = tl.arange(0, score.shape[0]) == score.shape[0] - 1
    return tl.sum(tl.where(last, occupancy, 0.0), axis=0)


@triton.jit
def _gradient_kernel(
    x_ptr, x_stride_t, x_stride_n, x_stride_c,  # (T, N, C) log-probabilities, or logits
    stats_ptr,  # (T, N, 2) frame max and log sum exp of the logits; with LOGITS
    history_ptr,  # (2, N, T, W) alpha, then beta
    emission_max_ptr,  # (N, T)
    order_ptr, sorted_ptr,  # (N, W) states sorted by class, stable; their classes (C past 2L+1)
    state_classes_ptr,  # (N, C + 1) uint8: 1 where a class is some state's (the last column: none)
    input_lengths_ptr, target_lengths_ptr, loss_ptr,  # (N,)
    grad_ptr, grad_stride_t, grad_stride_n,  # (T, N, C), class stride 1
    batch, num_frames_max, num_classes, width,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, FRAMES: tl.constexpr,
    SINGLE_TILE: tl.constexpr, ONE_CLASS_BLOCK: tl.constexpr, LOGITS: tl.constexpr,
    MEAN: tl.constexpr,
):
    # FRAMES consecutive frames of one sequence: its sorted states are read once for all
    first_frame = tl.program_id(0).to(tl.int64) * FRAMES
    n = tl.program_id(1).to(tl.int64)
    num_frames = tl.load(input_lengths_ptr + n)
    feasible = tl.load(loss_ptr + n) != float("inf")
    weight = 1.0  # the reduction's factor of the sequence: 'mean' divides by N max(L, 1)
    if MEAN:
        weight = 1.0 / (tl.maximum(tl.load(target_lengths_ptr + n), 1).to(ACC) * batch)
    order_row = order_ptr + n * width
    sorted_row = sorted_ptr + n * width
    q = tl.arange(0, BLOCK_S)
    if SINGLE_TILE:
        order, classes, is_label, run_start, run_end = _sorted_states(order_row, sorted_row, q,
                                                                      width, num_classes)
    state_classes_row = state_classes_ptr + n * (num_classes + 1)
    if ONE_CLASS_BLOCK:  # which classes the states own, read once for all the frames
        cols = tl.arange(0, BLOCK_C)
        owned = tl.load(state_classes_row + cols, mask=cols < num_classes, other=0) != 0
    for t in range(first_frame, tl.minimum(first_frame + FRAMES, num_frames_max)):
        inside = (t < num_frames) & feasible
        x_frame = x_ptr + t * x_stride_t + n * x_stride_n
        grad_row = grad_ptr + t * grad_stride_t + n * grad_stride_n
        # softmax = exp((z - max) - log sum): max + log sum would round at the logits' scale
        frame_max = 0.0
        log_sum = 0.0
        if LOGITS:
            stats = stats_ptr + 2 * (t * batch + n)
            frame_max = tl.load(stats).to(ACC)
            log_sum = tl.load(stats + 1).to(ACC)
        # every class no state owns: 0, or weight * softmax for logits (all classes outside the
        # input); the states' classes get their sums below, so each element is written once
        for start in range(0, num_classes, BLOCK_C):
            if not ONE_CLASS_BLOCK:
                cols = start + tl.arange(0, BLOCK_C)
                owned = tl.load(state_classes_row + cols, mask=cols < num_classes, other=0) != 0
            dense = tl.where(inside, owned == 0, True) & (cols < num_classes)
            value = tl.zeros([BLOCK_C], ACC)
            if LOGITS:
                read = tl.where(inside, dense, False)
                z = tl.load(x_frame + cols * x_stride_c, mask=read, other=float("-inf")).to(ACC)
                value = tl.where(inside, tl.exp((z - frame_max) - log_sum) * weight, 0.0)
            tl.store(grad_row + cols, round_to(value, grad_ptr.dtype.element_ty), mask=dense)
        if inside:
            alpha_row = history_ptr + (n * num_frames_max + t) * width
            beta_row = history_ptr + ((batch + n) * num_frames_max + t) * width
            emission_max = tl.load(emission_max_ptr + n * num_frames_max + t)
            if SINGLE_TILE:
                score, emit = _scores(alpha_row, beta_row, x_frame, x_stride_c, emission_max,
                                      order, classes, is_label, ACC)
                score_max = _finite_max(score)
                score_sum = tl.sum(tl.exp(score - score_max), axis=0)
                _store_class_sums(score, score_max, score_sum, emit, classes, run_start, run_end,
                                  0.0, grad_row, weight, frame_max, log_sum, LOGITS)
            else:
                # the normaliser over every tile (online max and sum), then the posteriors
                score_max = tl.full([], float("-inf"), ACC)
                score_sum = tl.zeros([], ACC)
                for start in range(0, width, BLOCK_S):
                    order, classes, is_label, _, _ = _sorted_states(order_row, sorted_row,
                                                                    start + q, width, num_classes)
                    score, _ = _scores(alpha_row, beta_row, x_frame, x_stride_c, emission_max,
                                       order, classes, is_label, ACC)
                    new_max = tl.maximum(score_max, tl.max(score, axis=0))
                    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
                    score_sum = score_sum * tl.exp(score_max - shift) \
                        + tl.sum(tl.exp(score - shift), axis=0)
                    score_max = new_max
                score_max = tl.where(score_max == float("-inf"), 0.0, score_max)
                carry = tl.zeros([], ACC)
                for start in range(0, width, BLOCK_S):
                    order, classes, is_label, run_start, run_end = _sorted_states(
                        order_row, sorted_row, start + q, width, num_classes)
                    score, emit = _scores(alpha_row, beta_row, x_frame, x_stride_c, emission_max,
                                          order, classes, is_label, ACC)
                    carry = _store_class_sums(score, score_max, score_sum, emit, classes,
                                              run_start, run_end, carry, grad_row, weight,
                                              frame_max, log_sum, LOGITS)

@triton.jit
def _frame_stats_kernel(
    x_ptr, x_stride_t, x_stride_n, x_stride_c,  # (T, N, C) logits
    stats_ptr,  # (T, N, 2) per frame: max (0 if all -inf) and log sum exp(z - max)
    input_lengths_ptr, batch, num_classes,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    frame = tl.program_id(0).to(tl.int64)
    t = frame // batch
    n = frame % batch
    # frames past the input are never read
    read_limit = tl.where(t < tl.load(input_lengths_ptr + n), num_classes, 0)
    x_row = x_ptr + t * x_stride_t + n * x_stride_n
    cols = tl.arange(0, BLOCK)
    m = tl.full([], float("-inf"), ACC)
    total = tl.zeros([], ACC)
    for start in range(0, num_classes, BLOCK):  # online lse over the blocks
        z = tl.load(x_row + (start + cols) * x_stride_c, mask=start + cols < read_limit,
                    other=float("-inf")).to(ACC)
        new_m = tl.maximum(m, tl.max(z, axis=0))
        shift = tl.where(new_m == float("-inf"), 0.0, new_m)
        total = total * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)
        m = new_m
    tl.store(stats_ptr + 2 * frame, tl.where(m == float("-inf"), 0.0, m))
    tl.store(stats_ptr + 2 * frame + 1, tl.log(total))


@triton.jit
def _states_kernel(
    targets_ptr, stride_tn, stride_ts,  # (N, S) padded labels, read inside each length
    target_lengths_ptr,  # (N,) int64
    extended_ptr,  # (N, W) the extended labels, written
    state_classes_ptr,  # (N, C + 1) uint8, zeroed: 1 stored at each state's class; with CLASS_MAP
    verdict_ptr,  # 0-d int32 of ones, cleared where a label is out of range; with CHECK
    width, blank, num_classes,
    BLOCK: tl.constexpr, CLASS_MAP: tl.constexpr, CHECK: tl.constexpr,
):
    # one program per sequence: blank at even states, the labels at odd ones, num_classes past
    # the 2L+1 states; the map's column C takes those padding states
    n = tl.program_id(0).to(tl.int64)
    num_states = 2 * tl.load(target_lengths_ptr + n) + 1
    for start in range(0, width, BLOCK):
        s = start + tl.arange(0, BLOCK)
        is_label = (s < num_states) & (s % 2 == 1)
        label = tl.load(targets_ptr + n * stride_tn + (s // 2) * stride_ts, mask=is_label,
                        other=blank)
        if CHECK:  # a label out of range is never used as an index: the assert stops the call
            out_of_range = is_label & ((label < 0) | (label >= num_classes))
            tl.store(verdict_ptr + 0 * s, 0, mask=out_of_range)
            label = tl.where(out_of_range, blank, label)
        classes = tl.where(s < num_states, label, num_classes)
        tl.store(extended_ptr + n * width + s, classes, mask=s < width)
        if CLASS_MAP:
            tl.store(state_classes_ptr + n * (num_classes + 1) + classes,
                     tl.full([BLOCK], 1, tl.uint8), mask=s < width)


# --- launchers -----------------------------------------------------------------------------

def _states(targets, target_lengths, blank, num_classes, class_map, label_error):
    """The extended labels (N, 2S+1), num_classes past each 2L+1 states (so that sorting by class
    puts those last); with class_map the (N, C + 1) byte map of the classes they hold; the label
    check's verdict (a 0-d int32, nonzero if every label is in range) with label_error, on which
    one assert is queued."""
    batch, labels = targets.shape
    width = 2 * labels + 1
    device = targets.device
    extended = torch.empty((batch, width), dtype=torch.int64, device=device)
    state_classes = verdict = extended  # placeholders where not wanted
    if class_map:
        state_classes = torch.zeros((batch, num_classes + 1), dtype=torch.uint8, device=device)
    if label_error is not None:
        verdict = torch.ones((), dtype=torch.int32, device=device)
    _states_kernel[(batch,)](
        targets, *targets.stride(), target_lengths, extended, state_classes, verdict, width,
        blank, num_classes, BLOCK=min(triton.next_power_of_2(width), 1024),
        CLASS_MAP=class_map, CHECK=label_error is not None)
    if label_error is not None:  # queued: no host sync (the CPU checks before any launch)
        torch._assert_async(verdict, label_error)
    return extended, state_classes


def _state_tile(width):
    return min(triton.next_power_of_2(width), MAX_STATE_TILE)


def _recursion_warps(block_s):
    # a cross-thread exchange every frame: few warps, several states per thread
    return max(1, min(4, block_s // 256))


def _ctc_forward(x, targets, input_lengths, target_lengths, blank, logits, compute_grad, mean,
                 zero_infinity, label_error):
    """Per-sequence losses (N,) in the accumulation dtype as reduced (0 where infinite with
    zero_infinity, over max(L_n, 1) with `mean`), and d(loss_n)/dx (T, N, C), over
    N max(L_n, 1) with `mean`, or None without compute_grad. label_error: the message of the
    label check the states kernel records (module header), where it is the call's."""
    acc = accumulation_dtype(x.dtype)
    num_frames, batch, num_classes = x.shape
    device = x.device
    extended, state_classes = _states(targets, target_lengths, blank, num_classes, compute_grad,
                                      label_error)
    width = extended.shape[1]
    num_pairs = targets.shape[1] + 1
    block_p = min(triton.next_power_of_2(num_pairs), MAX_STATE_TILE // 2)
    block_s = _state_tile(width)
    ACC = triton_accumulation(x.dtype)

    loss = torch.empty(batch, dtype=acc, device=device)
    reported = torch.empty(batch, dtype=acc, device=device)
    stats = loss  # read only for logits
    if logits:
        stats = torch.empty(num_frames, batch, 2, dtype=acc, device=device)
        block = min(row_block(num_classes), 4096)
        _frame_stats_kernel[(num_frames * batch,)](
            x, *x.stride(), stats, input_lengths, batch, num_classes,
            ACC=ACC, BLOCK=block, num_warps=row_warps(block))
    single_tile = num_pairs <= block_p
    rows, directions = (num_frames, 2) if compute_grad else (2, 1)
    history = loss  # one tile without a gradient keeps its states in registers
    if compute_grad or not single_tile:
        history = torch.empty(directions, batch, rows, width, dtype=acc, device=device)
    emission_max = loss  # written only with a gradient
    if compute_grad:
        emission_max = torch.empty(batch, num_frames, dtype=acc, device=device)
    _recursion_kernel[(batch, directions)](
        x, *x.stride(), stats, extended, input_lengths, target_lengths, history, rows,
        emission_max, loss, reported, batch, width, blank * x.stride(2), int(zero_infinity),
        ACC=ACC, BLOCK_P=block_p, SINGLE_TILE=single_tile, LOGITS=logits,
        COMPUTE_GRAD=compute_grad, MEAN=mean, num_warps=_recursion_warps(2 * block_p))
    if not compute_grad:
        return reported, None

    sorted_classes, order = torch.sort(extended, dim=1, stable=True)
    grad = torch.empty(x.shape, dtype=x.dtype, device=device)
    block_c = row_block(num_classes)
    _gradient_kernel[(triton.cdiv(num_frames, GRADIENT_FRAMES), batch)](
        x, *x.stride(), stats, history, emission_max, order, sorted_classes, state_classes,
        input_lengths, target_lengths, loss, grad, num_classes * batch, num_classes,
        batch, num_frames, num_classes, width,
        ACC=ACC, BLOCK_S=block_s, BLOCK_C=block_c, FRAMES=GRADIENT_FRAMES,
        SINGLE_TILE=width <= block_s, ONE_CLASS_BLOCK=num_classes <= block_c, LOGITS=logits,
        MEAN=mean, num_warps=row_warps(block_c))
    return reported, grad


def _per_sequence(grad_output):
    """Each sequence's grad_output (reduction='none'), or the one of a reduced loss, against the
    (T, N, C) gradient."""
    return grad_output.view(1, -1, 1)


def _ctc(x, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, logits,
         label_error):
    input_lengths = input_lengths.reshape(-1).contiguous()
    target_lengths = target_lengths.reshape(-1).contiguous()
    (compute_grad,) = wanted_gradients(x)

    def sweep(x):
        """The reduced CTC loss and its gradient; with reduction='none' the per-sequence losses,
        and the backward scales each sequence's gradient by its grad_output."""
        batched = x if x.dim() == 3 else x.unsqueeze(1)
        # unbatched: the target is one row
        rows = targets if x.dim() == 3 else targets.reshape(1, -1)
        loss, grad = _ctc_forward(batched.detach(), rows, input_lengths, target_lengths, blank,
                                  logits, compute_grad, reduction == "mean", zero_infinity,
                                  label_error)
        if x.dim() == 2:
            loss = loss.squeeze(0)
        loss = reduce(loss, reduction).to(loss_dtype(x.dtype, x.device))
        return Sweep((loss,), [None if grad is None else grad.view(batched.shape)],
                     shape_grad_output=_per_sequence,
                     finish=lambda _, g: g.view(x.shape))
    return precomputed_gradient(sweep, x)


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
             zero_infinity=False, queued_label_error=None):
    """queued_label_error: where the label range check is the call's (CUDA), its message: the
    states kernel records the check as it reads the labels and one assert is queued."""
    return _ctc(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                zero_infinity, logits=False, label_error=queued_label_error)


def ctc_loss_with_logits(logits, targets, input_lengths, target_lengths, blank=0,
                         reduction="mean", zero_infinity=False, queued_label_error=None):
    """queued_label_error: as ctc_loss's."""
    return _ctc(logits, targets, input_lengths, target_lengths, blank, reduction,
                zero_infinity, logits=True, label_error=queued_label_error)


KERNELS = {"ctc_loss": ctc_loss, "ctc_loss_with_logits": ctc_loss_with_logits}
