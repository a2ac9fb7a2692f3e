"""Softmax-family kernels: cross entropy (hard or soft labels, class weights, label smoothing,
z-loss, tanh soft-capping), softmax focal loss, and the NLL gather.

Algorithm: a persistent grid (`_common.persistent_programs`) whose program p sweeps the tokens
p, p + P, ... (the rows of the (N, C, S) logits view). Per token:
  pass 1  sweeps the row in blocks of BLOCK classes with an online log-sum-exp (running max m
          and rescaled sum s), the blocks aligned to the row's end (the first one partial, the
          last one whole: _block_range), plus the row sums the loss needs: sum(w*z) and
          sum(w) for label smoothing, sum(w*q*z) and sum(w*q) for soft labels q, the
          probability mass off the target for focal loss (so 1 - p_t has no cancellation).
          Then it gathers the target logit and computes the token's loss (and lse when asked).
  pass 2  (only when a gradient is wanted) recomputes p = exp((z - m) - log s) and writes
          d(loss)/d(logits), already divided by the 'mean' denominator, into the gradient
          buffer (the logits' own storage with inplace_backward); for soft labels that require
          grad, d(loss)/d(q) = -w log_softmax(z) in the same sweep. It starts from the last
          block, kept in registers from pass 1 as loaded (its class weights and soft labels
          loaded again; not in fp64, nor with class weights and label smoothing together,
          which spilled: _holds_last_block), then reads the other blocks again from the last
          down to the first, so that it reads first what pass 1 read last.
          A row that fits one block keeps it in registers and skips the second read: any row of
          up to MAX_ROW_BLOCK classes (8192 on a GPU), and a row of up to MAX_HELD_ROW (32768:
          Llama 2's and Mistral's vocabularies) where little else is live beside it (hard
          labels, no smoothing, z-loss, soft-capping, focal term or lse; rows 16-byte aligned;
          _held_row_block), which then takes one block of 16 warps: such a row's logits are
          read once, its HBM traffic the 2-pass bound whatever the L2 holds.
  An ignored token writes its zero gradient and reads nothing else (unless its lse is asked for).
The 'mean' divisor is computed by every program from the targets (N labels, and the class weight
of each: a few bytes per token, L2-resident, against a row of C logits), and the reduction over
tokens happens in the launch: each program keeps the sum of its own tokens in order, stores it,
and the program that finishes last (an acq_rel counter of whole numbers, exact in any order)
sums the P partials in program order, divides and writes the loss: the same bits run to run
(`_common.ordered_program_sums`). The backward only scales the stored gradient by grad_output
(free when it is 1).

NLL: a gather launch over blocks of tokens (each one's -w_t log p_t and w_t, the weights kept
for the backward), reduced in the launch the same way, the weights' sum being the 'mean'
divisor; its backward is one launch that writes the whole gradient once.

The class-index check, where it is the launch's (CUDA, torch.compile: CHECK_TARGETS): a target
that is neither a class nor ignore_index is treated as ignored (nothing is read at it) and
counted; a reduced launch marks a spare slot of its partials and its last program writes the
verdict (1: every target in range) over the spent counter, else the verdict is a 0-d tensor of
ones that such a program clears. The launcher queues one assert on it: no pass over the targets.

Second reads from L2: the rows in flight are the P programs' rows, so P is sized to keep them
within half the L2 (never fewer than one program per SM, at most two), pass 1 loads with
evict_last (but the kept block, never read again, with evict_first) and pass 2 with
evict_first. Where the rows in flight outgrow the L2 anyway (fp32 rows of 128k classes and
beyond, 132 of them), a forward second sweep would find each block evicted by the newer ones
after it, the worst order for a least-recently-used cache; the downward sweep takes the newest
first, so the hits are whatever the L2 still holds. Both block loops are software-pipelined
(`tl.range(num_stages=...)`) so a block's load overlaps the previous block's math: 2 stages
for 16-bit logits (and fp32 focal loss), 1 for fp32 and fp64, the most that compile for sm_90
without register spills (`_num_stages` has the measurements).

Access width: a block's loads and stores compile to 16-byte vectors only where the compiler can
prove the row's start 16-byte aligned and its length whole vectors, which a row stride that is
no multiple of 16 elements (V = 50257) hides. Such rows of contiguous 16- or 32-bit classes are
split (VEC > 1, _row_split): the body, from the row's first 16-byte boundary for whole vectors,
is swept as above with both facts told to the compiler (tl.multiple_of), and the head and tail
(under 16 bytes each) are one small block of 2 VEC lanes, reduced into the statistics before the
body's loop and read again in pass 2 (holding it through the loops spilled registers). Columns
then count from the body's first, so targets and class weights are shifted by the head.

Vocabulary chunks (linear_cross_entropy's blocks, a vocabulary-parallel rank's slice): with
PARTIAL_STATS a launch runs pass 1 on the chunk's columns and merges its statistics (m, s, the
two sums, and the target logit where the target lies in the chunk) into per-token running ones
(online log-sum-exp, in chunk order); with FROM_STATS a launch reads the whole row's statistics
instead of sweeping, writes the loss, and runs pass 2 on the chunk. Targets stay global
(class_offset), and smoothing divides by the whole vocabulary (total_classes).

Tokens of an (N, C, d1..dk) input are (n, s) pairs addressed through strides (the class stride
is S there), so no transposed copy is made; `reshape` merges d1..dk without copying unless
their strides cannot be merged (then the kernel works on that copy, and inplace_backward writes
its gradient there rather than into the caller's storage).
"""
import math

import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import (ELEMENTWISE_BLOCK, MAX_HELD_ROW, MAX_ROW_BLOCK, accumulation_dtype,
                      fp32_pair, held_row_warps, mean_or_nan, ordered_program_sums,
                      persistent_programs, round_to, row_block, row_warps, triton_accumulation)
from ._math import pow_nonnegative, tanh
from .._autocast import loss_dtype
from ._precomputed_gradient import Sweep, precomputed_gradient, wanted_gradients


@triton.jit
def _load_block(logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, start,
                num_classes, total_classes, label_smoothing, softcap,
                ACC: tl.constexpr, BLOCK: tl.constexpr, SOFT_LABELS: tl.constexpr,
                HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                EVICTION: tl.constexpr):
    """_load_columns of the block at `start` (_block_columns)."""
    cols, mask = _block_columns(start, num_classes, BLOCK)
    return _load_columns(logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr,
                         cols, mask, total_classes, label_smoothing, softcap, ACC, SOFT_LABELS,
                         HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, EVICTION)


@triton.jit
def _block_columns(start, num_classes, BLOCK: tl.constexpr):
    """The block of columns [start, start + BLOCK) and those in a row of num_classes (the first
    block of a looped row starts before it: _block_range)."""
    cols = start + tl.arange(0, BLOCK)
    return cols, (cols >= 0) & (cols < num_classes)


@triton.jit
def _load_columns(logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, cols,
                  mask, total_classes, label_smoothing, softcap, ACC: tl.constexpr,
                  SOFT_LABELS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                  HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                  EVICTION: tl.constexpr):
    """Columns `cols` of a row where `mask`: _columns of their logits."""
    raw = _load_logits(logits_row, logits_stride_c, cols, mask, EVICTION)
    return _columns(raw, target_row, target_stride_c, weight_ptr, cols, mask, total_classes,
                    label_smoothing, softcap, ACC, SOFT_LABELS, HAS_WEIGHT, HAS_SMOOTHING,
                    HAS_SOFTCAP, EVICTION)


@triton.jit
def _load_logits(logits_row, logits_stride_c, cols, mask, EVICTION: tl.constexpr):
    """The logits at `cols` where `mask`, as stored (-inf padding)."""
    return tl.load(logits_row + cols.to(tl.int64) * logits_stride_c, mask=mask,
                   other=float("-inf"), eviction_policy=EVICTION)


@triton.jit
def _columns(raw, target_row, target_stride_c, weight_ptr, cols, mask, total_classes,
             label_smoothing, softcap, ACC: tl.constexpr, SOFT_LABELS: tl.constexpr,
             HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
             EVICTION: tl.constexpr):
    """Columns `cols` of a row where `mask`, from their logits as loaded (`raw`, -inf padding):
    (cols, mask, capped logits z in the accumulation dtype, class factor v, w).

    w is the class weight (1 without weights, 0 on padding); v is w for hard labels and w * q
    with q the (smoothed) target probability for soft labels.
    """
    z = raw.to(ACC)  # the interpreter keeps bf16 as raw bits: nothing but this cast touches raw
    if HAS_SOFTCAP:
        # padding must stay -inf: capped, it would become -softcap and carry probability
        z = tl.where(mask, softcap * tanh(z / softcap), float("-inf"))
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(ACC)
    else:
        w = mask.to(ACC)
    v = w
    if SOFT_LABELS:
        q = tl.load(target_row + cols.to(tl.int64) * target_stride_c, mask=mask, other=0.0,
                    eviction_policy=EVICTION).to(ACC)
        if HAS_SMOOTHING:
            q = tl.where(mask, q * (1.0 - label_smoothing) + label_smoothing / total_classes, 0.0)
        v = v * q
    return cols, mask, z, v, w


@triton.jit
def _block_stats(cols, mask, z, v, target, SOFT_LABELS: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
                 FOCAL: tl.constexpr):
    """Block max m, sum of exp(z - m) and the two extra sums (see the module header)."""
    m = tl.max(z, axis=0)
    e = tl.exp(z - tl.where(m == float("-inf"), 0.0, m))  # an all -inf block sums to 0, not NaN
    s = tl.sum(e, axis=0)
    a1 = s * 0.0  # zero in the accumulation dtype; unused sums cost nothing
    a2 = a1
    if FOCAL:
        a1 = tl.sum(tl.where(cols != target, e, 0.0), axis=0)
    elif SOFT_LABELS or HAS_SMOOTHING:
        a1 = tl.sum(v * tl.where(mask, z, 0.0), axis=0)
        a2 = tl.sum(v, axis=0)
    return m, s, a1, a2


@triton.jit
def _write_grad(grad_row, grad_stride_c, target_grad_row, target_grad_stride_c, cols, mask, z, v,
                w, m, log_s, target, coef, smooth_coef, sum_v, z_coef, row_scale, softcap,
                label_smoothing,
                SOFT_LABELS: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_Z_LOSS: tl.constexpr,
                HAS_SOFTCAP: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                TARGET_GRAD: tl.constexpr):
    """Pass 2 on one block: d loss / d logits and, for soft labels when asked, d loss / d q =
    -(1 - label_smoothing) w log_softmax(z) (torch smooths q before the loss)."""
    if TARGET_GRAD:
        t = row_scale * w * ((m - z) + log_s)
        if HAS_SMOOTHING:
            t = t * (1.0 - label_smoothing)
        tl.store(target_grad_row + cols.to(tl.int64) * target_grad_stride_c,
                 round_to(t, target_grad_row.dtype.element_ty), mask=mask)
    if COMPUTE_GRAD:
        _write_logits_grad(grad_row, grad_stride_c, cols, mask, z, v, m, log_s, target, coef,
                           smooth_coef, sum_v, z_coef, row_scale, softcap,
                           SOFT_LABELS, HAS_SMOOTHING, HAS_Z_LOSS, HAS_SOFTCAP)


@triton.jit
def _write_logits_grad(grad_row, grad_stride_c, cols, mask, z, v, m, log_s, target, coef,
                       smooth_coef, sum_v, z_coef, row_scale, softcap,
                       SOFT_LABELS: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
                       HAS_Z_LOSS: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    p = tl.exp((z - m) - log_s)
    if SOFT_LABELS:
        g = sum_v * p - v
    else:
        # target lane as (p - 1) in the accumulation dtype, before any rounding
        g = coef * tl.where(cols == target, p - 1.0, p)
        if HAS_SMOOTHING:
            g += smooth_coef * (sum_v * p - v)
    if HAS_Z_LOSS:
        g += z_coef * p
    if HAS_SOFTCAP:
        t = z / softcap
        g = g * (1.0 - t * t)  # d(softcap * tanh(x / softcap))/dx
    g = g * row_scale
    tl.store(grad_row + cols.to(tl.int64) * grad_stride_c,
             round_to(g, grad_row.dtype.element_ty), mask=mask)


@triton.jit
def _kept_class(label, ignore_index, total_classes):
    """Whether a class-index target counts: not ignored, and a class of the vocabulary."""
    return (label != ignore_index) & (label >= 0) & (label < total_classes)


@triton.jit
def _mean_denominator(target_ptr, weight_ptr, num_tokens, ignore_index, total_classes,
                      ACC: tl.constexpr, TOKEN_BLOCK: tl.constexpr, SOFT_LABELS: tl.constexpr,
                      WEIGHTED: tl.constexpr):
    """The 'mean' divisor: the token count for soft labels, else the summed class weight (the
    count without weights) of the non-ignored targets, in a fixed order, so every program of
    the launch computes the same value. A target outside the vocabulary counts as ignored (its
    weight is never read; the launch's check reports it)."""
    if SOFT_LABELS:
        return tl.cast(1.0, ACC) * num_tokens
    total = tl.zeros((TOKEN_BLOCK,), ACC)
    for start in range(0, num_tokens, TOKEN_BLOCK):
        tokens = start + tl.arange(0, TOKEN_BLOCK)
        in_range = tokens < num_tokens
        label = tl.load(target_ptr + tokens, mask=in_range, other=0).to(tl.int64)
        kept = in_range & _kept_class(label, ignore_index, total_classes)
        if WEIGHTED:
            total += tl.load(weight_ptr + tl.where(kept, label, 0), mask=kept, other=0.0).to(ACC)
        else:
            total += kept.to(ACC)
    return tl.sum(total, axis=0)


@triton.jit
def _row_split(row_offset, num_classes, VEC: tl.constexpr):
    """A row that starts row_offset elements past a 16-byte-aligned base, as head columns
    [0, head), body [head, head + body) and tail [head + body, num_classes): the body starts on a
    16-byte boundary (VEC elements to 16 bytes) and is whole vectors long, and the compiler is
    told both, so its loads and stores compile to 128-bit ones whatever the row length (rows of
    50257 classes compile to scalar ones otherwise). Returns head, body and the body's offset
    from the base."""
    head = (VEC - row_offset % VEC) % VEC
    body = tl.maximum(num_classes - head, 0) // VEC * VEC
    return head, tl.multiple_of(body, VEC), tl.multiple_of(row_offset + head, VEC)


@triton.jit
def _edge_columns(head, body, num_classes, VEC: tl.constexpr):
    """A split row's head and tail (under VEC columns each) as one block of 2 VEC lanes:
    (cols, mask), the columns counted from the body's first (the head's are negative)."""
    lane = tl.arange(0, 2 * VEC)
    in_head = lane < VEC
    cols = tl.where(in_head, lane - head, body + (lane - VEC))
    return cols, (cols < num_classes - head) & tl.where(in_head, lane < head, True)


@triton.jit
def _load_edge(logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, head, body,
               num_classes, total_classes, label_smoothing, softcap, ACC: tl.constexpr,
               VEC: tl.constexpr, SOFT_LABELS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
               HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, EVICTION: tl.constexpr):
    """_load_columns of a split row's head and tail (_edge_columns)."""
    cols, mask = _edge_columns(head, body, num_classes, VEC)
    return _load_columns(logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr,
                         cols, mask, total_classes, label_smoothing, softcap, ACC, SOFT_LABELS,
                         HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, EVICTION)


@triton.jit
def _zero_row(grad_row, grad_stride_c, num_classes, BLOCK: tl.constexpr):
    """An ignored token's gradient: zeros, written without reading its logits."""
    for start in range(0, num_classes, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        tl.store(grad_row + cols.to(tl.int64) * grad_stride_c,
                 tl.zeros((BLOCK,), grad_row.dtype.element_ty), mask=cols < num_classes)


@triton.jit
def _block_range(body, BLOCK: tl.constexpr, SINGLE_BLOCK: tl.constexpr):
    """The starts of a row's first and last blocks. A looped row's blocks end where the row
    ends, so its last block is whole (kept from pass 1 for pass 2 with HOLD_LAST) and its first
    one starts before the row (masked); every start keeps the divisibility of the row's length."""
    first = body * 0  # body's integer type, whichever it is
    last = first
    if not SINGLE_BLOCK:
        last = body - BLOCK
        first = last - (tl.maximum(tl.cdiv(body, BLOCK), 1) - 1) * BLOCK
    return first, last


@triton.jit
def _row_sweep(
    logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, target, body, head,
    first, last, num_classes, total_classes, label_smoothing, softcap,
    ACC: tl.constexpr, BLOCK: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
    HOLD_LAST: tl.constexpr, NUM_STAGES: tl.constexpr, VEC: tl.constexpr,
    SOFT_LABELS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, FOCAL: tl.constexpr,
):
    """Pass 1 over the row's (or chunk's) columns: the online statistics (m, s, a1, a2) of the
    body's blocks from `first` to `last` (_block_range) and, with VEC > 1, of the head and tail
    (_row_split); m = -inf for a row of -inf. With HOLD_LAST, returns the last block's logits
    too, loaded last and kept in registers for pass 2, which writes its gradient without reading
    it again (else m stands in for them)."""
    m = tl.full([], float("-inf"), ACC)
    s = tl.zeros([], ACC)
    a1, a2 = s, s
    if VEC > 1:  # merged before the loop: only the four statistics are live through it
        e_cols, e_mask, e_z, e_v, e_w = _load_edge(
            logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, head, body,
            num_classes, total_classes, label_smoothing, softcap, ACC, VEC, SOFT_LABELS,
            HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, "evict_last")
        m, s, a1, a2 = _block_stats(e_cols, e_mask, e_z, e_v, target, SOFT_LABELS,
                                    HAS_SMOOTHING, FOCAL)
    loop_end = last
    if not HOLD_LAST:
        loop_end = last + BLOCK
    if not SINGLE_BLOCK:
        for start in tl.range(first, loop_end, BLOCK, num_stages=NUM_STAGES):
            b_cols, b_mask, b_z, b_v, b_w = _load_block(
                logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, start,
                body, total_classes, label_smoothing, softcap,
                ACC, BLOCK, SOFT_LABELS, HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, "evict_last")
            b_m, b_s, b_a1, b_a2 = _block_stats(b_cols, b_mask, b_z, b_v, target, SOFT_LABELS,
                                                HAS_SMOOTHING, FOCAL)
            m, s, a1, a2 = _merge_stats(m, s, a1, a2, b_m, b_s, b_a1, b_a2, FOCAL)
    raw = m
    if HOLD_LAST:
        # the last block, never read again from memory (evict_first), is kept as loaded (in 16
        # bits for 16-bit logits) and without its class factors (pass 2 loads those again)
        cols, mask = _block_columns(last, body, BLOCK)
        raw = _load_logits(logits_row, logits_stride_c, cols, mask, "evict_first")
        cols, mask, z, v, w = _columns(raw, target_row, target_stride_c, weight_ptr, cols, mask,
                                       total_classes, label_smoothing, softcap, ACC, SOFT_LABELS,
                                       HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, "evict_last")
        b_m, b_s, b_a1, b_a2 = _block_stats(cols, mask, z, v, target, SOFT_LABELS,
                                            HAS_SMOOTHING, FOCAL)
        m, s, a1, a2 = _merge_stats(m, s, a1, a2, b_m, b_s, b_a1, b_a2, FOCAL)
    return raw, m, s, a1, a2


@triton.jit
def _merge_stats(m, s, a1, a2, b_m, b_s, b_a1, b_a2, FOCAL: tl.constexpr):
    """Online log-sum-exp: the statistics of two column ranges as those of their union."""
    new_m = tl.maximum(m, b_m)
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    r, b_r = tl.exp(m - shift), tl.exp(b_m - shift)
    s = s * r + b_s * b_r
    if FOCAL:
        a1 = a1 * r + b_a1 * b_r  # off-target mass rescales like s
    else:
        a1 += b_a1
    return new_m, s, a1, a2 + b_a2


@triton.jit
def _loss_from_stats(m, s, a1, a2, z_t, w_t, total_classes, label_smoothing, z_loss, gamma,
                     SOFT_LABELS: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
                     HAS_Z_LOSS: tl.constexpr, FOCAL: tl.constexpr):
    """A token's loss from its row statistics and (capped) target logit z_t of weight w_t;
    returns (loss, lse, m, log s, coef: the hard-label gradient's factor)."""
    # lse = m + log s, but p = exp((z - m) - log s) and lse - z_t = (m - z_t) + log s keep the
    # two apart, as torch's log_softmax does: m + log s rounds to an ulp of m (large logits)
    m = tl.where(m == float("-inf"), 0.0, m)
    log_s = tl.log(s)
    lse = m + log_s
    if SOFT_LABELS:
        coef = 0.0
        loss = a2 * lse - a1  # -sum(w q (z - lse))
    elif FOCAL:
        off_target = a1 / s  # 1 - p_t without cancellation
        # near p_t = 1, z_t - lse rounds to 0: take log(1 - off) from its series there
        log_pt = tl.where(off_target < 1e-3,
                          -off_target * (1.0 + off_target * (0.5 + off_target / 3.0)),
                          (z_t - m) - log_s)
        modulator = pow_nonnegative(off_target, gamma)
        loss = -w_t * modulator * log_pt
        # -d(loss)/d(log p_t) = w (1-p)^g (1 - g p log(p) / (1-p)); the logits' gradient is
        # coef * (p - onehot). log(p) / (1-p) -> -1 as p -> 1, so no 0 * inf at p_t = 1.
        log_ratio = tl.where(off_target > 0, log_pt / off_target, -1.0)
        coef = w_t * modulator * (1.0 - gamma * tl.exp(log_pt) * log_ratio)
    else:
        coef = (1.0 - label_smoothing) * w_t
        loss = coef * ((m - z_t) + log_s)
        if HAS_SMOOTHING:
            loss += label_smoothing * (a2 * lse - a1) / total_classes
    if HAS_Z_LOSS:
        loss += z_loss * lse * lse
    return loss, lse, m, log_s, coef


@triton.jit
def _capped_logit(logits_row, logits_stride_c, target, owned, softcap, ACC: tl.constexpr,
                  HAS_SOFTCAP: tl.constexpr):
    """The target's logit, soft-capped; 0 where `owned` is false (read nothing there)."""
    z_t = tl.load(logits_row + target * logits_stride_c, mask=owned, other=0.0).to(ACC)
    if HAS_SOFTCAP:
        z_t = softcap * tanh(z_t / softcap)
    return z_t


@triton.jit
def _gradient_sweep(
    logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, grad_row,
    grad_stride_c, target_grad_row, target_grad_stride_c, target, first, end, num_classes,
    total_classes, m, log_s, coef, sum_v, z_coef, row_scale, label_smoothing, softcap,
    ACC: tl.constexpr, BLOCK: tl.constexpr, NUM_STAGES: tl.constexpr, SOFT_LABELS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_Z_LOSS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, COMPUTE_GRAD: tl.constexpr, TARGET_GRAD: tl.constexpr,
):
    """Pass 2 reading the row's blocks again: the gradients of the blocks from end - BLOCK
    down to first (_block_range), most recently read first: the likeliest still in the L2."""
    start = end  # carried down the loop: recomputed from the count, it spilled (triton 3.6)
    for _ in tl.range(0, (end - first) // BLOCK, num_stages=NUM_STAGES):
        start -= BLOCK
        cols, mask, z, v, w = _load_block(
            logits_row, logits_stride_c, target_row, target_stride_c, weight_ptr, start,
            num_classes, total_classes, label_smoothing, softcap,
            ACC, BLOCK, SOFT_LABELS, HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, "evict_first")
        _write_grad(grad_row, grad_stride_c, target_grad_row, target_grad_stride_c, cols, mask,
                    z, v, w, m, log_s, target, coef, label_smoothing / total_classes, sum_v,
                    z_coef, row_scale, softcap, label_smoothing, SOFT_LABELS, HAS_SMOOTHING,
                    HAS_Z_LOSS, HAS_SOFTCAP, COMPUTE_GRAD, TARGET_GRAD)


@triton.jit
def _softmax_loss_kernel(
    logits_ptr, logits_stride_n, logits_stride_c, logits_stride_s,
    target_ptr,  # hard labels: (N*S,) class indices; soft labels: (N, C, S) probabilities
    target_stride_n, target_stride_c, target_stride_s,  # soft labels only
    weight_ptr,  # (total_classes,) class weights, alpha for focal loss; read when HAS_WEIGHT
    grad_ptr, grad_stride_n, grad_stride_c, grad_stride_s,  # written when COMPUTE_GRAD
    target_grad_ptr,  # (N, C, S) d loss / d probabilities, written when TARGET_GRAD
    target_grad_stride_n, target_grad_stride_c, target_grad_stride_s,
    loss_ptr,  # REDUCE: the 0-d reduced loss; else (N*S,) per-token loss
    lse_ptr,  # (N*S,) per-token lse, written when RETURN_LSE
    denominator_ptr,  # 0-d 'mean' divisor, read when DENOMINATOR_GIVEN
    partials_ptr,  # REDUCE: (2 + programs,) zeros: a finished-program count, the partial sums
                   # and a slot marked where a target is out of range (CHECK_TARGETS)
    stats_ptr,  # (N*S, STATS) per token (m, s, a1, a2, z_t): merged into by PARTIAL_STATS, read by
                # FROM_STATS (the columns are then a chunk of the vocabulary)
    token_scale_ptr,  # (N*S,) a per-token factor of the gradient, read when HAS_TOKEN_SCALE
    check_ptr,  # CHECK_TARGETS and not REDUCE: a 0-d verdict of ones, cleared where a target is
                # out of range (REDUCE marks the slot after the partials and writes the verdict
                # over the counter)
    num_classes, spatial, num_tokens,  # C (of this chunk) and S = d1*...*dk; token = n * S + s
    class_offset, total_classes,  # the chunk's first class and the whole vocabulary's size
    ignore_index,
    label_smoothing, label_smoothing_lo, z_loss, z_loss_lo, softcap, softcap_lo, gamma, gamma_lo,
    ACC: tl.constexpr, BLOCK: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
    HOLD_LAST: tl.constexpr,  # a looped row's last block kept from pass 1 for pass 2
    NUM_STAGES: tl.constexpr,
    VEC: tl.constexpr,  # > 1: rows split into head, 16-byte-aligned body and tail (_row_split)
    TOKEN_BLOCK: tl.constexpr,
    SOFT_LABELS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
    HAS_Z_LOSS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, FOCAL: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, TARGET_GRAD: tl.constexpr, MEAN: tl.constexpr,
    DENOMINATOR_GIVEN: tl.constexpr, CHECK_TARGETS: tl.constexpr,
    REDUCE: tl.constexpr, RETURN_LSE: tl.constexpr,
    PARTIAL_STATS: tl.constexpr, FROM_STATS: tl.constexpr, HAS_TOKEN_SCALE: tl.constexpr,
):
    # scalar arguments arrive as fp32 pairs (_common.fp32_pair): fp64 inputs get ~48 bits
    label_smoothing = tl.cast(label_smoothing, ACC) + label_smoothing_lo
    z_loss = tl.cast(z_loss, ACC) + z_loss_lo
    softcap = tl.cast(softcap, ACC) + softcap_lo
    gamma = tl.cast(gamma, ACC) + gamma_lo
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    denominator = tl.cast(1.0, ACC)
    if MEAN:
        if DENOMINATOR_GIVEN:
            denominator = tl.load(denominator_ptr).to(ACC)
        else:
            denominator = _mean_denominator(target_ptr, weight_ptr, num_tokens, ignore_index,
                                            total_classes, ACC, TOKEN_BLOCK, SOFT_LABELS,
                                            HAS_WEIGHT and not FOCAL)
    # ignored tokens get exactly 0, also when all are ignored and 1 / denominator is inf
    row_scale = 1.0 / denominator
    chunk_weight_ptr = weight_ptr + class_offset
    partial = tl.cast(0.0, ACC)
    misplaced = 0  # this program's targets neither a class nor ignore_index
    for token in range(pid.to(tl.int64), num_tokens, programs):
        n = token // spatial
        s_idx = token % spatial
        stats_row = stats_ptr + token * _STATS
        if SOFT_LABELS:
            label = -1
            kept = token >= 0  # every token
        else:
            label = tl.load(target_ptr + token).to(tl.int64)
            kept = _kept_class(label, ignore_index, total_classes)
            if CHECK_TARGETS:
                misplaced += (~kept & (label != ignore_index)).to(tl.int32)
        # ignored tokens read class 0, never out of bounds; `target` is the chunk's column
        global_target = tl.where(kept, label, 0)
        target = global_target - class_offset
        owned = (target >= 0) & (target < num_classes) & kept
        token_scale = tl.where(kept, row_scale, 0.0)
        if HAS_TOKEN_SCALE:
            token_scale *= tl.load(token_scale_ptr + token).to(ACC)
        if VEC > 1:
            # the row addressed from its 16-byte-aligned body (_row_split): the launcher checked
            # that every row tensor's rows lie at the logits' offsets, so one offset serves all,
            # and the columns (target, weights) count from the body's first, `head`
            head, body, offset = _row_split(n * logits_stride_n + s_idx * logits_stride_s,
                                            num_classes, VEC)
            logits_row, target_row = logits_ptr + offset, target_ptr + offset
            grad_row, target_grad_row = grad_ptr + offset, target_grad_ptr + offset
            row_weight_ptr = chunk_weight_ptr + head
            target -= head
        else:
            head, body = 0, num_classes
            logits_row = logits_ptr + n * logits_stride_n + s_idx * logits_stride_s
            target_row = target_ptr + n * target_stride_n + s_idx * target_stride_s
            grad_row = grad_ptr + n * grad_stride_n + s_idx * grad_stride_s
            target_grad_row = (target_grad_ptr + n * target_grad_stride_n
                               + s_idx * target_grad_stride_s)
            row_weight_ptr = chunk_weight_ptr
        first, last = _block_range(body, BLOCK, SINGLE_BLOCK)
        loss = tl.cast(0.0, ACC)
        if kept | RETURN_LSE:  # an ignored token's lse still reads its row
            if FROM_STATS:
                m, s = tl.load(stats_row), tl.load(stats_row + 1)
                a1, a2, z_t = tl.load(stats_row + 2), tl.load(stats_row + 3), tl.load(stats_row + 4)
            else:
                held, m, s, a1, a2 = _row_sweep(
                    logits_row, logits_stride_c, target_row, target_stride_c, row_weight_ptr,
                    target, body, head, first, last, num_classes, total_classes,
                    label_smoothing, softcap, ACC,
                    BLOCK, SINGLE_BLOCK, HOLD_LAST, NUM_STAGES, VEC, SOFT_LABELS, HAS_WEIGHT,
                    HAS_SMOOTHING, HAS_SOFTCAP, FOCAL)
                z_t = _capped_logit(logits_row, logits_stride_c, target, owned, softcap, ACC,
                                    HAS_SOFTCAP)
            if PARTIAL_STATS:  # this chunk's statistics merged into the running ones
                m, s, a1, a2 = _merge_stats(tl.load(stats_row), tl.load(stats_row + 1),
                                            tl.load(stats_row + 2), tl.load(stats_row + 3),
                                            m, s, a1, a2, False)
                tl.store(stats_row, m)
                tl.store(stats_row + 1, s)
                tl.store(stats_row + 2, a1)
                tl.store(stats_row + 3, a2)
                tl.store(stats_row + 4, z_t, mask=owned)
            else:
                w_t = 1.0
                if HAS_WEIGHT and not SOFT_LABELS:
                    w_t = tl.load(weight_ptr + global_target).to(ACC)
                loss, lse, m, log_s, coef = _loss_from_stats(
                    m, s, a1, a2, z_t, w_t, total_classes, label_smoothing, z_loss, gamma,
                    SOFT_LABELS, HAS_SMOOTHING, HAS_Z_LOSS, FOCAL)
                loss = tl.where(kept, loss, 0.0)
                if RETURN_LSE:
                    tl.store(lse_ptr + token, lse)
                if COMPUTE_GRAD or TARGET_GRAD:
                    # pass 2: gradients of this token's loss, divided by the mean's denominator
                    z_coef = 2.0 * z_loss * lse
                    if FROM_STATS or not HOLD_LAST:  # every block read again
                        swept_end = last + BLOCK
                    else:  # the last block from registers, the others read again
                        cols, mask = _block_columns(last, body, BLOCK)
                        cols, mask, z, v, w = _columns(
                            held, target_row, target_stride_c, row_weight_ptr, cols, mask,
                            total_classes, label_smoothing, softcap, ACC, SOFT_LABELS, HAS_WEIGHT,
                            HAS_SMOOTHING, HAS_SOFTCAP, "evict_first")
                        _write_grad(grad_row, grad_stride_c, target_grad_row,
                                    target_grad_stride_c, cols, mask, z, v, w, m, log_s, target,
                                    coef, label_smoothing / total_classes, a2, z_coef,
                                    token_scale, softcap, label_smoothing, SOFT_LABELS,
                                    HAS_SMOOTHING, HAS_Z_LOSS, HAS_SOFTCAP, COMPUTE_GRAD,
                                    TARGET_GRAD)
                        swept_end = last
                    if VEC > 1:  # the head and tail read again (L1-hot): held, they spilled
                        edge_cols, edge_mask, edge_z, edge_v, edge_w = _load_edge(
                            logits_row, logits_stride_c, target_row, target_stride_c,
                            row_weight_ptr, head, body, num_classes, total_classes,
                            label_smoothing, softcap, ACC, VEC, SOFT_LABELS, HAS_WEIGHT,
                            HAS_SMOOTHING, HAS_SOFTCAP, "evict_first")
                        _write_grad(grad_row, grad_stride_c, target_grad_row,
                                    target_grad_stride_c, edge_cols, edge_mask, edge_z, edge_v,
                                    edge_w, m, log_s, target, coef,
                                    label_smoothing / total_classes, a2, z_coef, token_scale,
                                    softcap, label_smoothing, SOFT_LABELS, HAS_SMOOTHING,
                                    HAS_Z_LOSS, HAS_SOFTCAP, COMPUTE_GRAD, TARGET_GRAD)
                    if FROM_STATS or not SINGLE_BLOCK:
                        _gradient_sweep(
                            logits_row, logits_stride_c, target_row, target_stride_c,
                            row_weight_ptr, grad_row, grad_stride_c, target_grad_row,
                            target_grad_stride_c, target, first, swept_end, body,
                            total_classes, m, log_s, coef, a2, z_coef, token_scale,
                            label_smoothing, softcap, ACC, BLOCK, NUM_STAGES, SOFT_LABELS,
                            HAS_WEIGHT, HAS_SMOOTHING, HAS_Z_LOSS, HAS_SOFTCAP, COMPUTE_GRAD,
                            TARGET_GRAD)
        elif COMPUTE_GRAD:
            _zero_row(grad_row, grad_stride_c, body, BLOCK)
            if VEC > 1:
                edge_cols, edge_mask = _edge_columns(head, body, num_classes, VEC)
                tl.store(grad_row + edge_cols * grad_stride_c,
                         tl.zeros(edge_cols.shape, grad_row.dtype.element_ty), mask=edge_mask)
        if REDUCE:
            partial += loss
        elif not PARTIAL_STATS:
            tl.store(loss_ptr + token, round_to(loss, loss_ptr.dtype.element_ty))
    if CHECK_TARGETS and misplaced > 0:
        if REDUCE:
            tl.store(partials_ptr + 1 + programs, 1.0)
        else:
            tl.store(check_ptr, 0.0)
    if REDUCE:  # each program's partial sums its rows in a fixed order
        last, total, _ = ordered_program_sums(partials_ptr, pid, programs, partial, partial,
                                              False, TOKEN_BLOCK)
        if last:
            if MEAN:  # every token ignored or weighted 0: NaN
                total = mean_or_nan(total, denominator)
            tl.store(loss_ptr, round_to(total, loss_ptr.dtype.element_ty))
            if CHECK_TARGETS:  # the verdict in the spent counter's place: 1 if no target was marked
                marked = tl.load(partials_ptr + 1 + programs, cache_modifier=".cg")
                tl.store(partials_ptr, (marked == 0).to(ACC))


@triton.jit
def _nll_kernel(
    log_probs_ptr, stride_n, stride_c, stride_s,
    target_ptr,  # (N*S,) class indices
    weight_ptr,  # (C,) class weights; read when HAS_WEIGHT
    loss_ptr,  # (N*S,) per-token loss, accumulation dtype; with REDUCE 0-d, the loss's dtype
    target_weight_ptr,  # (N*S,) weight of each token's target, 0 when ignored
    check_ptr,  # CHECK_TARGETS: a 0-d verdict of ones, cleared where a target is out of range
    partials_ptr,  # REDUCE: zeroed (1 + 2 programs,), _common.ordered_program_sums'
    denominator_ptr,  # REDUCE: 0-d, the sum of the target weights ('mean' divisor)
    num_tokens, spatial, num_classes, ignore_index,
    ACC: tl.constexpr, BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    CHECK_TARGETS: tl.constexpr, REDUCE: tl.constexpr, MEAN: tl.constexpr,
):
    """A block of tokens: each one's -w_t log p_t and w_t; with REDUCE their sum (over the sum
    of the weights with MEAN, NaN where that is 0, as torch's) and the weights' sum, written by
    the program that finishes last."""
    pid = tl.program_id(0)
    tokens = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = tokens < num_tokens
    label = tl.load(target_ptr + tokens, mask=in_range, other=0).to(tl.int64)
    # a target that is neither a class nor ignore_index counts as ignored: nothing is read at it
    kept = in_range & _kept_class(label, ignore_index, num_classes)
    if CHECK_TARGETS:
        if tl.sum((in_range & ~kept & (label != ignore_index)).to(tl.int32), axis=0) > 0:
            tl.store(check_ptr, 0.0)
    target = tl.where(kept, label, 0)
    offsets = (tokens // spatial) * stride_n + target * stride_c + (tokens % spatial) * stride_s
    log_p = tl.load(log_probs_ptr + offsets, mask=kept, other=0.0).to(ACC)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + target, mask=kept, other=0.0).to(ACC)
    else:
        w = kept.to(ACC)
    w = tl.where(kept, w, 0.0)
    loss = tl.where(kept, -w * log_p, 0.0)
    tl.store(target_weight_ptr + tokens, w, mask=in_range)
    if REDUCE:
        last, total, weights = ordered_program_sums(
            partials_ptr, pid, tl.num_programs(0), tl.sum(loss, axis=0), tl.sum(w, axis=0),
            True, BLOCK)
        if last:
            if MEAN:
                total = mean_or_nan(total, weights)
            tl.store(loss_ptr, round_to(total, loss_ptr.dtype.element_ty))
            tl.store(denominator_ptr, weights)
    else:
        tl.store(loss_ptr + tokens, loss, mask=in_range)


@triton.jit
def _nll_backward_kernel(
    grad_ptr,  # (N, C, S) contiguous d loss / d log-probabilities, written whole
    target_ptr,  # (N*S,) class indices
    target_weight_ptr,  # (N*S,) the forward's weight of each token's target, 0 when ignored
    grad_output_ptr,  # 0-d, or (N*S,) per token when PER_TOKEN
    denominator_ptr,  # 0-d 'mean' divisor, read when MEAN
    num_classes, spatial, ignore_index,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    PER_TOKEN: tl.constexpr, MEAN: tl.constexpr,
):
    """One (BLOCK_C classes x BLOCK_S positions) tile of a sample: -w_t * grad_output (over the
    'mean' divisor) at each position's target class, 0 elsewhere and for ignored tokens. The
    grid's first axis runs over samples and position blocks (no limit of 65535 there), the
    second over class blocks."""
    position_blocks = tl.cdiv(spatial, BLOCK_S)
    n = tl.program_id(0).to(tl.int64) // position_blocks
    positions = (tl.program_id(0) % position_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    classes = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_range = positions < spatial
    tokens = n * spatial + positions
    label = tl.load(target_ptr + tokens, mask=in_range, other=0).to(tl.int64)
    kept = in_range & _kept_class(label, ignore_index, num_classes)
    if PER_TOKEN:
        scale = tl.load(grad_output_ptr + tokens, mask=in_range, other=0.0).to(ACC)
    else:
        scale = tl.load(grad_output_ptr).to(ACC)
    if MEAN:
        scale = scale / tl.load(denominator_ptr).to(ACC)
    coef = tl.where(kept, -tl.load(target_weight_ptr + tokens, mask=in_range, other=0.0) * scale,
                    0.0)
    hit = classes[:, None] == label[None, :]  # coef is 0 for an ignored token
    offsets = (n * num_classes + classes[:, None]) * spatial + positions[None, :]
    tl.store(grad_ptr + offsets,
             round_to(tl.where(hit, coef[None, :], 0.0), grad_ptr.dtype.element_ty),
             mask=(classes[:, None] < num_classes) & in_range[None, :])


# --- launchers -----------------------------------------------------------------------------

def _as_tokens(tensor):
    """(C,), (N, C) or (N, C, d1..dk) as an (N, C, S) tensor (a view whenever strides allow)."""
    if tensor.dim() == 1:
        return tensor.unsqueeze(0).unsqueeze(-1)
    return tensor.reshape(tensor.shape[0], tensor.shape[1], math.prod(tensor.shape[2:]))


def _token_shape(input):
    """Shape of per-token values: the target's shape, () for a single (C,) sample."""
    return input.shape[:1] + input.shape[2:] if input.dim() > 1 else torch.Size()


def _check_no_grad(**tensors):
    for name, wanted in zip(tensors, wanted_gradients(*tensors.values())):
        if wanted:
            raise NotImplementedError(
                f"the fusedloss kernels differentiate with respect to the input only; {name} "
                "requires grad (use fusedloss.use_backend('reference') for that)")


def _hard_denominator(target, weight, ignore_index, acc):
    """Sum of the target weights of the non-ignored tokens, on the device (no host sync)."""
    kept = target != ignore_index
    if weight is None:
        return kept.sum().to(acc)
    return (weight.to(acc)[torch.where(kept, target, 0).long()] * kept).sum()


# Per-token row statistics of a vocabulary chunk's launch: running max m, sum of exp(z - m),
# the two extra sums of the module header and the (capped) target logit
STATS = 5
_STATS = tl.constexpr(STATS)

# Tokens per block of the in-kernel 'mean' divisor and of the cross-program sum
_TOKEN_BLOCK = 1024


def _num_stages(dtype, focal, split_with_second_row=False):
    """Software-pipelining stages of the block loops (blocks in flight per program), the most
    that compile for sm_90 without register spills on both CI stacks (benchmarks/compile_sm90.py,
    triton 3.9 and 3.6): 2 for 16-bit logits, one block's load in flight beside the block being
    reduced; 1 for fp32 and fp64, whose blocks (8192 and 4096 wide) are twice the bytes.
    3 stages spilled in every dtype (fp32 at V = 50257, whose rows are not 16-byte aligned so the
    loads in flight wait in registers: 112 bytes a thread; every option on at V = 128256: 8 to
    16 bytes); 2 stages spilled fp32 on triton 3.6 (4 to 8 bytes) and fp64 (32 to 64 bytes, in
    8192-wide blocks).
    fp32 focal loss is the exception: 1 stage spilled it on triton 3.6 (36 bytes), 2 do not.
    Rows split at 16-byte boundaries (_row_split) with a second row vector (soft labels, class
    weights) take 1: 2 spilled 16-bit logits on triton 3.6 (soft labels with every option on at
    V = 50257: 24 bytes; class weights with smoothing, z-loss and soft-capping: 52)."""
    if split_with_second_row:
        return 1
    if dtype in (torch.float16, torch.bfloat16) or (focal and dtype == torch.float32):
        return 2
    return 1


def _aligned_vector(logits, *rows):
    """Elements of the logits per 16 bytes when their rows can be split at 16-byte boundaries
    (_row_split) and need it, else 1: rows of contiguous classes whose starts the compiler cannot
    prove 16-byte aligned (a row stride that is no multiple of 16 elements: 16 is what triton's
    specialisation of integer arguments tells it), when every row tensor (the gradient, soft
    targets and their gradient; None ones left out) has the logits' element size and strides and
    a 16-byte-aligned start, so that its rows sit at the logits' offsets."""
    size = logits.element_size()
    spatial = logits.shape[2]
    if logits.stride(1) != 1 or 16 % size:
        return 1
    if logits.stride(0) % 16 == 0 and (spatial == 1 or logits.stride(2) % 16 == 0):
        return 1  # rows the compiler already knows aligned
    for row in (logits, *rows):
        if row is not None and (row.data_ptr() % 16 or row.element_size() != size
                                or row.stride() != logits.stride()):
            return 1
    return 16 // size


def _split_fits_registers(dtype, weighted, label_smoothing, z_loss, softcap):
    """Whether split rows compile for sm_90 without register spills on both CI stacks
    (benchmarks/compile_sm90.py, triton 3.9 and 3.6); where they do not, rows stay whole and keep
    narrower accesses. Not in fp64 (hundreds of bytes with every option; its 8-byte accesses
    lose less), nor in 16 bits with class weights, label smoothing and a logit option (z-loss or
    soft-capping) together (all four on: 20 bytes on triton 3.6; weights with smoothing, or with
    z-loss and soft-capping, fit)."""
    if dtype == torch.float64:
        return False
    return not (dtype != torch.float32 and weighted and label_smoothing != 0
                and (z_loss != 0 or softcap is not None))


def _holds_last_block(dtype, weighted, label_smoothing):
    """Whether a looped row keeps its last block in registers from pass 1 to pass 2 (read once,
    not twice), where that compiles for sm_90 without register spills on both CI stacks
    (benchmarks/compile_sm90.py, triton 3.9 and 3.6): not in fp64 (in 8192-wide blocks plain
    rows of 32000 to 128256 classes spilled 56 to 136 bytes; in its 4096-wide ones they fit,
    but rows with options spilled up to 336), nor with class weights and label smoothing
    together (4 bytes at V = 50257 in 16 bits on triton 3.6; 12 to 172 with z-loss, soft-capping
    and lse on as well). Those two rows, held or not, are what still spills for sm_80 (A100):
    12 bytes with weights and smoothing in 16 bits, 40 with every option in fp32; orderings of
    the sweeps that avoided it there spilled other variants for sm_90."""
    return dtype != torch.float64 and not (weighted and label_smoothing != 0)


def _looped_row_block(num_classes, dtype):
    """The block of a row that is not held whole: row_block's, halved for fp64 rows past one
    block. 8192 fp64 elements over 32 warps (64 registers a thread) spilled 160 to 690 bytes a
    thread for sm_90 with class weights, smoothing, z-loss or soft-capping on; 4096 over 16
    warps (128 registers) spill at most 100, with every option on (benchmarks/compile_sm90.py).
    A quarter spilled a little less but keeps half the bytes in flight."""
    block = row_block(num_classes)
    if dtype == torch.float64 and num_classes > block:
        return block // 2
    return block


def _held_row_block(logits, vector, *, soft, focal, label_smoothing, z_loss, softcap, lse,
                    stats):
    """The one block that holds a row longer than MAX_ROW_BLOCK whole, read once (pass 2 from
    registers), or None: for rows of at most MAX_HELD_ROW contiguous classes of 32 bits or fewer
    (fp64's spilled 0.6 to 2 KB a thread; strided classes would hold an address per element),
    already 16-byte aligned, of a whole-vocabulary launch (not a chunk's: `stats`) whose only
    row vector is the logits (hard labels, class weights or none) and no option keeps more
    values live (_common.MAX_HELD_ROW has the measurements)."""
    num_classes = logits.shape[1]
    if not MAX_ROW_BLOCK < num_classes <= MAX_HELD_ROW or logits.dtype == torch.float64:
        return None
    if logits.stride(1) != 1 or vector > 1 or stats is not None:
        return None
    if (soft or focal or label_smoothing != 0 or z_loss != 0 or softcap is not None
            or lse is not None):
        return None
    return triton.next_power_of_2(num_classes)


def launch_row_kernel(logits, target, weight, grad, loss, lse, denominator, *, soft, focal,
                      ignore_index, label_smoothing, z_loss, softcap, gamma=0.0, mean=False,
                      partials=None, target_grad=None, stats=None, from_stats=False,
                      class_offset=0, total_classes=None, token_scale=None, index_error=None):
    """Launch the row kernel over an (N, C, S) logits view (also used by linear_cross_entropy on
    its chunks). target: (N*S,) class indices, or (N, C, S) probabilities when `soft`; grad
    (logits' layout), lse and target_grad (soft labels: d loss / d probabilities, in their
    layout) are None when not wanted.

    `partials` None: `loss` (N*S,) receives the per-token loss, and the gradient is divided by
    the 0-d `denominator` when one is given. Else `loss` is 0-d and receives the sum (or with
    `mean` the mean, whose divisor the kernel computes itself) over tokens, and `partials` is a
    zeroed (2 + programs,) buffer of the accumulation dtype (reduction_partials).

    A chunk of the vocabulary (linear_cross_entropy's, a vocabulary-parallel rank's): `logits`
    holds classes [class_offset, class_offset + C) of `total_classes`, targets stay global and
    `weight` whole. With `stats` ((N*S, 5), initial_stats) and not `from_stats`, the launch only
    merges the chunk's row statistics into them (loss, lse and grad untouched; a given lse
    says that the ignored tokens' statistics are wanted too); with
    `from_stats`, it reads the whole rows' statistics from them instead of sweeping, writes
    the per-token loss (and lse) and the chunk's gradient. token_scale: (N*S,) factors of the
    gradient (a per-token grad_output), or None.

    index_error: a message, where the class-index targets' range check is this launch's to
    record: each program notes whether a target it read is neither a class nor ignore_index
    (such a target is treated as ignored: nothing is read at it), and one device assert with
    that message is queued on the launch's verdict, a 0-d tensor that is nonzero when every
    target is in range (the reduced launch writes it over its spent counter; else it is one
    allocation of ones), so the check costs no pass over the targets and one or two torch ops.
    """
    num_rows, num_classes, spatial = logits.shape
    num_tokens = num_rows * spatial
    vector = 1
    if _split_fits_registers(logits.dtype, weight is not None, label_smoothing, z_loss, softcap):
        vector = _aligned_vector(logits, grad, *((target, target_grad) if soft else ()))
    held = _held_row_block(logits, vector, soft=soft, focal=focal,
                           label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                           lse=lse, stats=stats)
    block = held or _looped_row_block(num_classes, logits.dtype)
    single_block = num_classes <= block
    warps = held_row_warps(block) if held else row_warps(block)
    programs = (partials.numel() - 2 if partials is not None else
                persistent_programs(logits.device, num_tokens, num_classes * logits.element_size()))
    check = None
    if index_error is not None:
        check = (partials[0] if partials is not None else
                 torch.ones((), dtype=accumulation_dtype(logits.dtype), device=logits.device))
    _softmax_loss_kernel[(programs,)](
        logits, *logits.stride(),
        target, *(target.stride() if soft else (0, 0, 0)),
        weight if weight is not None else loss,
        grad if grad is not None else loss, *(grad.stride() if grad is not None else (0, 0, 0)),
        target_grad if target_grad is not None else loss,
        *(target_grad.stride() if target_grad is not None else (0, 0, 0)),
        loss, lse if lse is not None else loss, denominator if denominator is not None else loss,
        partials if partials is not None else loss,
        stats if stats is not None else loss, token_scale if token_scale is not None else loss,
        check if check is not None and partials is None else loss,  # REDUCE's is in the partials
        num_classes, spatial, num_tokens, class_offset,
        num_classes if total_classes is None else total_classes, ignore_index,
        *fp32_pair(label_smoothing), *fp32_pair(z_loss),
        *fp32_pair(1.0 if softcap is None else softcap), *fp32_pair(gamma),
        ACC=triton_accumulation(logits.dtype), BLOCK=block, SINGLE_BLOCK=single_block,
        HOLD_LAST=single_block or _holds_last_block(logits.dtype, weight is not None,
                                                     label_smoothing),
        NUM_STAGES=_num_stages(logits.dtype, focal, vector > 1 and (soft or weight is not None)),
        VEC=vector,
        TOKEN_BLOCK=_TOKEN_BLOCK,
        SOFT_LABELS=soft, HAS_WEIGHT=weight is not None,
        HAS_SMOOTHING=label_smoothing != 0,  # torch accepts a negative smoothing too
        HAS_Z_LOSS=z_loss != 0, HAS_SOFTCAP=softcap is not None, FOCAL=focal,
        COMPUTE_GRAD=grad is not None, TARGET_GRAD=target_grad is not None, MEAN=mean or denominator is not None,
        DENOMINATOR_GIVEN=denominator is not None, CHECK_TARGETS=check is not None,
        REDUCE=partials is not None,
        RETURN_LSE=lse is not None, PARTIAL_STATS=stats is not None and not from_stats,
        FROM_STATS=from_stats, HAS_TOKEN_SCALE=token_scale is not None,
        num_warps=warps,
    )
    if check is not None:  # queued: no host sync (the CPU raises at once)
        torch._assert_async(check, index_error)


def initial_stats(num_tokens, dtype, device):
    """The (num_tokens, STATS) statistics of an empty row, into which chunks are merged."""
    stats = torch.zeros(num_tokens, STATS, dtype=dtype, device=device)
    stats[:, 0] = float("-inf")
    return stats


def reduction_partials(logits):
    """The zeroed (2 + programs,) buffer a reduced launch of the row kernel needs, in the
    accumulation dtype. (The loss gets its own allocation: were it a view of this buffer, autograd
    would forbid the caller's in-place `loss += ...` on a custom Function's output.)"""
    num_rows, num_classes, spatial = logits.shape
    programs = persistent_programs(logits.device, num_rows * spatial,
                                   num_classes * logits.element_size())
    return torch.zeros(2 + programs, dtype=accumulation_dtype(logits.dtype), device=logits.device)


def _softmax_loss_forward(input, target, weight, *, soft, focal, ignore_index, reduction,
                          label_smoothing, z_loss, softcap, gamma, return_lse, compute_grad,
                          inplace, target_grad_wanted=False, queued_index_error=None):
    """Launch the row kernel; returns (loss, lse or None, [d loss / d input, d loss / d target]
    with None where not wanted). queued_index_error: the launch's index_error."""
    acc = accumulation_dtype(input.dtype)
    logits = _as_tokens(input)
    num_rows, num_classes, spatial = logits.shape
    num_tokens = num_rows * spatial
    device = input.device
    flat_target = target.reshape(-1).contiguous() if not soft else None
    soft_target = _as_tokens(target) if soft else None

    token_shape = _token_shape(input)
    lse = torch.empty(num_tokens, dtype=acc, device=device) if return_lse else None
    grad = None
    if compute_grad:
        grad = logits if inplace else torch.empty(logits.shape, dtype=input.dtype, device=device)
    target_grad = None
    if target_grad_wanted:
        target_grad = torch.empty(soft_target.shape, dtype=target.dtype, device=device)
    out_dtype = loss_dtype(input.dtype, device)
    if reduction == "none":
        partials = None
        loss = torch.empty(token_shape, dtype=out_dtype, device=device)
    elif num_tokens > 0:
        partials = reduction_partials(logits)
        loss = torch.empty((), dtype=out_dtype, device=device)
    else:  # nothing to launch over: torch's empty sum and mean
        loss = torch.full((), 0.0 if reduction == "sum" else float("nan"), dtype=out_dtype,
                          device=device)

    if num_tokens > 0:
        launch_row_kernel(logits, soft_target if soft else flat_target, weight, grad, loss, lse,
                          None, soft=soft, focal=focal, ignore_index=ignore_index,
                          label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                          gamma=gamma, mean=reduction == "mean", partials=partials,
                          target_grad=target_grad, index_error=queued_index_error)

    lse = lse.view(token_shape) if return_lse else None
    return loss, lse, [None if grad is None else grad.view(input.shape),
                       None if target_grad is None else target_grad.view(target.shape)]


def _class_dimension(grad_output):
    """A per-token grad_output with a unit class dimension, to broadcast over the classes."""
    return grad_output.unsqueeze(1)


def _softmax_loss(input, target, weight, options):
    """Cross entropy and softmax focal loss: the forward writes the gradient (_precomputed_gradient
    scales it by grad_output)."""
    def sweep(input, target, weight):
        # detached: with inplace_backward the gradient aliases the input's storage, and a view
        # made here (grad mode off) could not be scaled in place by the backward
        loss, lse, grads = _softmax_loss_forward(input.detach(), target, weight, **options)
        per_token = options["reduction"] == "none" and input.dim() > 1
        # the gradient in the logits' storage (not in a copy _as_tokens made); an empty tensor's
        # data_ptr is 0 whoever owns it, and nothing of it is overwritten
        overwritten = (options["inplace"] and input.numel() > 0
                       and grads[0].data_ptr() == input.data_ptr())
        return Sweep((loss,) if lse is None else (loss, lse), [*grads, None],
                     shape_grad_output=_class_dimension if per_token else Sweep.shape_grad_output,
                     overwritten=0 if overwritten else None)
    outputs = precomputed_gradient(sweep, input, target, weight)
    if isinstance(outputs, tuple) and outputs[-1] is input:  # the overwritten logits, rebased
        outputs = outputs[0] if len(outputs) == 2 else outputs[:-1]
    return outputs


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, return_lse=False,
                  inplace_backward=False, queued_index_error=None):
    soft = target.is_floating_point()
    _check_no_grad(weight=weight)  # soft targets may require grad; class indices cannot
    weight = weight.contiguous() if weight is not None else None
    compute_grad, target_grad_wanted = wanted_gradients(input, target)
    options = dict(soft=soft, focal=False, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, gamma=0.0,
                   return_lse=return_lse, compute_grad=compute_grad,
                   inplace=inplace_backward and compute_grad, target_grad_wanted=target_grad_wanted,
                   queued_index_error=queued_index_error)
    return _softmax_loss(input, target, weight, options)


def _whole_vocabulary_stats(stats, all_reduce):
    """A vocabulary shard's (N, STATS) row statistics made the whole vocabulary's, in place: the
    max over shards, then the sums, each shard's sum of exponentials rescaled to that max (the
    target logit is summed too: only its owner's is not 0). all_reduce(tensor, op), op "max" or
    "sum", reduces a contiguous tensor over the shards in place."""
    high = stats[:, 0].contiguous()
    all_reduce(high, "max")
    shift = torch.where(high == float("-inf"), 0.0, high)
    sums = stats[:, 1:].contiguous()
    sums[:, 0] *= torch.exp(stats[:, 0] - shift)
    all_reduce(sums, "sum")
    stats[:, 0], stats[:, 1:] = high, sums
    return stats


def vocab_shard_cross_entropy(logits_shard, target, all_reduce, *, class_offset, total_classes,
                              ignore_index, reduction, label_smoothing, z_loss, index_error=None):
    """Cross entropy of logits split along the vocabulary (last) dimension: this shard holds
    classes [class_offset, class_offset + C) of total_classes, target (...) the global classes.

    The row kernel merges the shard's row statistics (its own sweep), all_reduce makes them the
    whole vocabulary's (O(tokens), _whole_vocabulary_stats), and a second launch writes the
    loss and the shard's gradient from them (reading the shard again), so the backward is the
    shared scaling by grad_output. Values equal cross_entropy on the gathered logits.
    index_error: the second launch's (launch_row_kernel), which reads every target.
    """
    def sweep(input, target):
        input = input.detach()
        num_local = input.shape[-1]
        logits = input.reshape(-1, num_local, 1)
        flat_target = target.reshape(-1).contiguous()
        num_tokens = logits.shape[0]
        acc = accumulation_dtype(input.dtype)
        out_dtype = loss_dtype(input.dtype, input.device)
        grad = (torch.empty(logits.shape, dtype=input.dtype, device=input.device)
                if compute_grad else None)
        options = dict(soft=False, focal=False, ignore_index=ignore_index,
                       label_smoothing=label_smoothing, z_loss=z_loss, softcap=None,
                       class_offset=class_offset, total_classes=total_classes)
        if reduction == "none":
            partials, loss = None, torch.empty(target.shape, dtype=out_dtype, device=input.device)
        elif num_tokens:
            partials = reduction_partials(logits)
            loss = torch.empty((), dtype=out_dtype, device=input.device)
        else:  # nothing to launch over (on any rank): torch's empty sum and mean
            loss = torch.full((), 0.0 if reduction == "sum" else float("nan"), dtype=out_dtype,
                              device=input.device)
        if num_tokens:
            stats = initial_stats(num_tokens, acc, input.device)
            launch_row_kernel(logits, flat_target, None, None, stats, None, None, stats=stats,
                              **options)
            _whole_vocabulary_stats(stats, all_reduce)
            launch_row_kernel(logits, flat_target, None, grad, loss, None, None, stats=stats,
                              from_stats=True, mean=reduction == "mean", partials=partials,
                              index_error=index_error, **options)
        return Sweep((loss,), [None if grad is None else grad.view(input.shape), None],
                     shape_grad_output=(_last_dimension if reduction == "none"
                                        else Sweep.shape_grad_output))
    (compute_grad,) = wanted_gradients(logits_shard)
    return precomputed_gradient(sweep, logits_shard, target)


def _last_dimension(grad_output):
    """A per-token grad_output with a unit class dimension last, as a shard's classes are."""
    return grad_output.unsqueeze(-1)


def softmax_focal_loss(input, target, alpha=None, gamma=2.0, ignore_index=-100, reduction="mean",
                       queued_index_error=None):
    _check_no_grad(alpha=alpha)
    alpha = alpha.contiguous() if alpha is not None else None
    (compute_grad,) = wanted_gradients(input)
    options = dict(soft=False, focal=True, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=0.0, z_loss=0.0, softcap=None, gamma=gamma, return_lse=False,
                   compute_grad=compute_grad, inplace=False, queued_index_error=queued_index_error)
    return _softmax_loss(input, target, alpha, options)


class _NLLLoss(torch.autograd.Function):
    """Forward: a gather kernel (each token's -w_t log p_t and w_t). Backward: one kernel
    writing the whole gradient once, -w_t * grad_output / denominator at each target and 0
    elsewhere (grad_output and the 'mean' divisor read on the device): the one write of the
    gradient its bound allows."""

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, index_error):
        acc = accumulation_dtype(input.dtype)
        device = input.device
        log_probs = _as_tokens(input)
        num_rows, num_classes, spatial = log_probs.shape
        num_tokens = num_rows * spatial
        flat_target = target.reshape(-1).contiguous()
        target_weight = torch.empty(num_tokens, dtype=acc, device=device)
        # 'mean' and 'sum' are reduced by the launch itself, with its 'mean' divisor
        in_kernel = reduction != "none" and num_tokens > 0
        if in_kernel:
            loss = torch.empty((), dtype=loss_dtype(input.dtype, device), device=device)
            denominator = torch.empty((), dtype=acc, device=device)
        else:
            loss = torch.empty(num_tokens, dtype=acc, device=device)
        if num_tokens > 0:
            block = min(ELEMENTWISE_BLOCK, triton.next_power_of_2(num_tokens))
            programs = triton.cdiv(num_tokens, block)
            check = (torch.ones((), dtype=acc, device=device) if index_error is not None
                     else None)
            partials = (torch.zeros(1 + 2 * programs, dtype=acc, device=device) if in_kernel
                        else None)
            _nll_kernel[(programs,)](
                log_probs, *log_probs.stride(), flat_target,
                weight if weight is not None else loss, loss, target_weight,
                check if check is not None else loss, partials if in_kernel else loss,
                denominator if in_kernel else loss,
                num_tokens, spatial, num_classes, ignore_index,
                ACC=triton_accumulation(input.dtype), BLOCK=block, HAS_WEIGHT=weight is not None,
                CHECK_TARGETS=check is not None, REDUCE=in_kernel, MEAN=reduction == "mean",
                num_warps=row_warps(block),  # 4 warps on 4096 tokens spilled (ptxas, sm_90)
            )
            if check is not None:  # queued: no host sync (the CPU raises at once)
                torch._assert_async(check, index_error)
        if in_kernel:
            reduced = loss
        else:  # the backward reads the divisor with 'mean' alone
            denominator = target_weight.sum() if reduction == "mean" else target_weight
            reduced = reduce(loss.view(_token_shape(input)), reduction, denominator).to(
                loss_dtype(input.dtype, device))
        ctx.save_for_backward(flat_target, target_weight, denominator)
        ctx.shape = (num_rows, num_classes, spatial)
        ctx.input_shape, ctx.dtype = input.shape, input.dtype
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        return reduced

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        flat_target, target_weight, denominator = ctx.saved_tensors
        num_rows, num_classes, spatial = ctx.shape
        grad = torch.empty(ctx.shape, dtype=ctx.dtype, device=flat_target.device)
        if grad.numel():
            per_token = ctx.reduction == "none"
            grad_output = grad_output.reshape(-1).contiguous() if per_token else grad_output
            block_s = min(triton.next_power_of_2(spatial), 64)
            block_c = min(ELEMENTWISE_BLOCK // block_s, triton.next_power_of_2(num_classes))
            grid = (num_rows * triton.cdiv(spatial, block_s), triton.cdiv(num_classes, block_c))
            _nll_backward_kernel[grid](
                grad, flat_target, target_weight, grad_output, denominator,
                num_classes, spatial, ctx.ignore_index,
                ACC=triton_accumulation(ctx.dtype), BLOCK_C=block_c, BLOCK_S=block_s,
                PER_TOKEN=per_token, MEAN=ctx.reduction == "mean",
                num_warps=row_warps(block_c * block_s),
            )
        return grad.view(ctx.input_shape), None, None, None, None, None


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean",
             queued_index_error=None):
    """queued_index_error: a message, where the class-index check is the gather kernel's to
    record (each program clears a verdict of ones where it read a target that is neither a
    class nor ignore_index; one assert with the message is queued on it)."""
    _check_no_grad(weight=weight)
    weight = weight.contiguous() if weight is not None else None
    return _NLLLoss.apply(input, target, weight, ignore_index, reduction, queued_index_error)


KERNELS = {
    "cross_entropy": cross_entropy,
    "nll_loss": nll_loss,
    "softmax_focal_loss": softmax_focal_loss,
}
