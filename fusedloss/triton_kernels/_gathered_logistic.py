"""The gathered-row logistic engine that hsigmoid.py and nce.py run.

Both losses score a sample x against a few rows of a weight matrix and pay a binary logistic
cost on each: hsigmoid visits the inner nodes on its class's tree path (target bit = path code),
NCE the true class (target 1) and k noise classes (target 0). Per (sample, entry j), with row
r_j of W and target y_j:
    z_j = x . W[r_j] + b[r_j]
    t_j = z_j                                   (hsigmoid)
    t_j = log sigmoid(z_j) - log(k q(r_j))       (NCE: log o - log b, Fluid's formula)
    cost_j = softplus(t_j) - y_j t_j,   d cost_j / d t_j = sigmoid(t_j) - y_j
evaluated as softplus(-t) + (1 - y) t where y > 1/2, so neither y = 0 nor y = 1 cancels and
nothing overflows at any |t|. An entry with r_j = -1 is padding (custom trees) and skipped.
The rows and target bits come from the family modules (Paths): a custom tree's paths, NCE's
classes; hsigmoid's default tree (DefaultTree) is computed by the forward kernel from the
labels, which writes its rows out only for the scatter.

Passes:
  forward  one program per sample. Pass 1 loops over its entries in tiles of BLOCK_M and over
           the features in chunks of BLOCK_D, gathering the W rows, and finishes z, the cost
           and dz_j = d cost_j / d z_j (NCE also d cost_j / d log b_j). d loss / d x =
           sum_j dz_j W[r_j] comes from the same gathered tile when the features fit one chunk;
           otherwise pass 2 re-reads the W rows (mostly from cache).
  scatter  the weight/bias (and NCE's noise log-prob) gradients, deterministic and without
           atomics: the (sample, entry) pairs are stably sorted by row (torch.sort), a row's
           entries are then a run of the sorted order whose bounds searchsorted gives (with an
           arange, three torch ops in all: no per-row counts or prefix sums), and it is cut
           into chunks of P consecutive entries. One program per (row, feature chunk) takes
           the row's head, its run up to the end of the chunk it starts in; one per (chunk,
           feature chunk) takes the body of the run that reaches into that chunk from before
           it. A run within one chunk (untouched rows included, which write zeros, so dW
           needs no memset) is written by its head program; a longer run's head and bodies
           write fp32 partials that a second launch sums per row in chunk order. So a row every
           sample visits (the default tree's root) is split over many programs. P is sized
           from the entry count alone (no host synchronisation): a piece costs P / BLOCK_E
           steps and the longest possible row's reduction E / (P * REDUCE_ROWS) steps, both
           about sqrt(E / (BLOCK_E * REDUCE_ROWS)). (A binary search in every program instead
           of searchsorted would repeat each row's search once per feature chunk.)
  'mean' / 'sum' run the scatter in the forward, with 1/N folded into dz, so every gradient is
  final and the backward is the shared precomputed-gradient one (_precomputed_gradient.py: it
  moves nothing when grad_output is 1). 'none' cannot: its per-sample grad_output weighs each
  sample's share of a row, so its forward keeps dz and d loss / d x in the accumulation dtype and
  its backward scales d loss / d x by grad_output and casts it in one pass, then scatters with
  grad_output applied to dz as it is read.
Kept: for 'mean' / 'sum' the finished gradients alone, each in its input's dtype (dz (N, M)
and the partials live only through the forward); for 'none' dz, d loss / d x (N, D) in the
accumulation dtype (fp32, fp64 for fp64), the rows and x.
Recomputed: the W rows of pass 2 (features beyond one chunk).
"""
import dataclasses
import math
import typing

import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import GPU_LAUNCH_PARAMS, accumulation_dtype, round_to, triton_accumulation
from ._math import sigmoids_and_logs
from .._autocast import loss_dtype
from ._precomputed_gradient import Sweep, precomputed_gradient, scale_gradient, wanted_gradients

# Launch sizes of the gathered-row kernels (here, not in _common: only hsigmoid and NCE gather
# rows). A 32 x 64 fp32 tile of gathered rows needs ~150 registers a thread at 4 warps and no
# spills (ptxas, sm_90); fp64 halves the columns. The interpreter's are tiny so small tests run
# every chunk loop and cut rows into several pieces.
MAX_BLOCK_D = 64 if GPU_LAUNCH_PARAMS else 32     # feature columns per step (fp32)
MAX_BLOCK_M = 32 if GPU_LAUNCH_PARAMS else 4      # entries (path nodes / classes) per step
SCATTER_BLOCK_E = 32 if GPU_LAUNCH_PARAMS else 4  # sorted entries per step of a piece
REDUCE_ROWS = 32 if GPU_LAUNCH_PARAMS else 2      # partials per step of the reduction
NUM_WARPS = 4


@triton.jit
def _softplus_sigmoid(a):
    """(softplus(a), sigmoid(a)), finite for every a."""
    sigmoid_a, _, _, log_sigmoid_neg = sigmoids_and_logs(a)
    return -log_sigmoid_neg, sigmoid_a


@triton.jit
def _logistic_cost(t, y):
    """(softplus(t) - y t, sigmoid(t) - y), written around softplus(-t) where y > 1/2."""
    flip = y > 0.5
    softplus_a, sigmoid_a = _softplus_sigmoid(tl.where(flip, -t, t))
    linear = tl.where(flip, 1 - y, -y)
    # the linear term is exactly 0 for y in {0, 1}, also where t is infinite (no 0 * inf)
    cost = softplus_a + tl.where(linear == 0, 0, linear * t)
    return cost, tl.where(flip, linear - sigmoid_a, sigmoid_a - y)


# Paddle's default tree, from a sample's label: step j visits node (code >> (j + 1)) - 1 with
# target bit (code >> j) & 1, code = label + num_classes, while that node exists (hsigmoid.py)
@triton.jit
def _entry_rows(rows_ptr, label_ptr, n, m, M, num_classes, num_rows, lowest_row, verdict_ptr,
                TREE: tl.constexpr, NCE: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Rows of W of sample n's entries m, -1 for padding and for an index out of range (never
    read at). CHECK_ROWS: the call's range check, recorded as the indices are read: the label
    (TREE) outside [0, num_classes), or a row outside [lowest_row, num_rows), clears its verdict
    (NCE: [0] the target's, entry 0, [1] the noise samples')."""
    if TREE:
        label = tl.load(label_ptr + n)
        node = (label + num_classes) >> (m.to(tl.int64) + 1)
        row = tl.where((node > 0) & (m < M), node - 1, -1)
        if CHECK_ROWS:
            tl.store(verdict_ptr, 0, mask=(label < 0) | (label >= num_classes))
    else:
        row = tl.load(rows_ptr + n * M + m, mask=m < M, other=-1)
        if CHECK_ROWS:
            if NCE:
                slot = tl.where(m > 0, 1, 0)
            else:
                slot = m * 0
            tl.store(verdict_ptr + slot, 0,
                     mask=(m < M) & ((row < lowest_row) | (row >= num_rows)))
    return tl.where(row < num_rows, row, -1)


@triton.jit
def _entry_bits(codes_ptr, label_ptr, n, m, M, num_classes, on, TREE: tl.constexpr):
    """hsigmoid's target bits of sample n's entries m (0 where `on` is off)."""
    if TREE:
        bit = ((tl.load(label_ptr + n) + num_classes) >> m.to(tl.int64)) & 1
    else:
        bit = tl.load(codes_ptr + n * M + m, mask=on, other=0)
    return tl.where(on, bit, 0)


@triton.jit
def _gathered_logistic_fwd_kernel(
    x_ptr, stride_xn, stride_xd,     # input (N, D)
    w_ptr, stride_wr, stride_wd,     # weight (R, D)
    b_ptr,                           # bias (R,) (HAS_BIAS)
    rows_ptr,                        # (N, M) int64 rows of W per sample, -1 = padding (TREE:
                                     # written here when STORE_ROWS)
    codes_ptr,                       # (N, M) int64 target bits (hsigmoid; NCE: y = [j == 0])
    label_ptr, num_classes,          # (N,) int64 classes of the default tree (TREE)
    num_rows, lowest_row,            # R, and the least row index (-1: padding) in range
    verdict_ptr,                     # (2,) int32 ones, cleared where an index is out of range
                                     # (CHECK_ROWS: _entry_rows)
    logq_ptr,                        # (R,) noise log-probabilities (NCE)
    num_noise,                       # k (NCE)
    divisor,                         # the gradients' divisor: N for 'mean', else 1
    loss_ptr,                        # (N,) per-sample loss, accumulation dtype
    dz_ptr,                          # (N, M) d cost / d z / divisor (STORE_DZ)
    dlogb_ptr,                       # (N, M) d cost / d log b / divisor (STORE_DLOGB, NCE)
    gx_ptr,                          # (N, D) d loss / d x / divisor (GRAD_X), contiguous
    M, D,
    NCE: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_DZ: tl.constexpr,
    STORE_DLOGB: tl.constexpr, GRAD_X: tl.constexpr, ONE_CHUNK: tl.constexpr,
    TREE: tl.constexpr, STORE_ROWS: tl.constexpr, CHECK_ROWS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + n * stride_xn
    loss = tl.zeros([BLOCK_M], ACC)
    if ONE_CHUNK:  # D <= BLOCK_D: x and each gathered tile are read once, d x comes from them
        d = tl.arange(0, BLOCK_D)
        # cast right after each load: the interpreter keeps bf16 as raw bits
        x_chunk = tl.load(x_row + d * stride_xd, mask=d < D, other=0).to(ACC)
        gx = tl.zeros([BLOCK_D], ACC)
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        row = _entry_rows(rows_ptr, label_ptr, n, m, M, num_classes, num_rows, lowest_row,
                          verdict_ptr, TREE, NCE, CHECK_ROWS)
        if STORE_ROWS:
            tl.store(rows_ptr + n * M + m, row, mask=m < M)
        on = row >= 0
        row = tl.where(on, row, 0)
        if ONE_CHUNK:
            w = tl.load(w_ptr + row[:, None] * stride_wr + d[None, :] * stride_wd,
                        mask=on[:, None] & (d < D)[None, :], other=0).to(ACC)
            z = tl.sum(w * x_chunk[None, :], axis=1)
        else:
            z = tl.zeros([BLOCK_M], ACC)
            for d0 in range(0, D, BLOCK_D):
                dc = d0 + tl.arange(0, BLOCK_D)
                xv = tl.load(x_row + dc * stride_xd, mask=dc < D, other=0).to(ACC)
                wc = tl.load(w_ptr + row[:, None] * stride_wr + dc[None, :] * stride_wd,
                             mask=on[:, None] & (dc < D)[None, :], other=0).to(ACC)
                z += tl.sum(wc * xv[None, :], axis=1)
        if HAS_BIAS:
            z += tl.load(b_ptr + row, mask=on, other=0).to(ACC)
        if NCE:
            y = (m == 0).to(ACC)
            softplus_neg, sigmoid_neg = _softplus_sigmoid(-z)  # log o = -softplus(-z)
            # log b = log q + log k (k broadcast first: it may arrive as the constexpr 1)
            log_b = tl.load(logq_ptr + row, mask=on, other=0).to(ACC) + tl.log(y * 0 + num_noise)
            cost, dt = _logistic_cost(-softplus_neg - log_b, y)
            dz = dt * sigmoid_neg  # d log o / d z = sigmoid(-z)
        else:
            y = tl.maximum(_entry_bits(codes_ptr, label_ptr, n, m, M, num_classes, on, TREE),
                           0).to(ACC)
            cost, dz = _logistic_cost(z, y)
        loss += tl.where(on, cost, 0)
        dz = tl.where(on, dz, 0) / divisor
        if STORE_DZ:
            tl.store(dz_ptr + n * M + m, dz, mask=m < M)
        if STORE_DLOGB:
            tl.store(dlogb_ptr + n * M + m, -dt / divisor, mask=m < M)
        if GRAD_X:
            if ONE_CHUNK:
                gx += tl.sum(dz[:, None] * w, axis=0)
    tl.store(loss_ptr + n, tl.sum(loss, axis=0))

    if GRAD_X:
        if ONE_CHUNK:
            tl.store(gx_ptr + n * D + d, round_to(gx, gx_ptr.dtype.element_ty), mask=d < D)
        else:
            tl.debug_barrier()  # dz was stored by other threads of this program
            for d0 in range(0, D, BLOCK_D):
                dc = d0 + tl.arange(0, BLOCK_D)
                acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
                for m0 in range(0, M, BLOCK_M):
                    m = m0 + tl.arange(0, BLOCK_M)
                    row = _entry_rows(rows_ptr, label_ptr, n, m, M, num_classes, num_rows,
                                      lowest_row, verdict_ptr, TREE, NCE, False)
                    on = row >= 0
                    dz = tl.load(dz_ptr + n * M + m, mask=on, other=0)
                    wc = tl.load(w_ptr + row[:, None] * stride_wr + dc[None, :] * stride_wd,
                                 mask=on[:, None] & (dc < D)[None, :], other=0).to(ACC)
                    acc += dz[:, None] * wc
                tl.store(gx_ptr + n * D + dc,
                         round_to(tl.sum(acc, axis=0), gx_ptr.dtype.element_ty), mask=dc < D)


@triton.jit
def _row_bounds(bounds_ptr, r, num_rows):
    """(first, end) of row r's run in the sorted entries; an empty run for a row index out of
    [0, R) (padding, or with a range check recorded an index out of range)."""
    row = (r >= 0) & (r < num_rows)
    return (tl.load(bounds_ptr + r, mask=row, other=0),
            tl.load(bounds_ptr + r + 1, mask=row, other=0))


@triton.jit
def _scatter_pieces_kernel(
    x_ptr, stride_xn, stride_xd,     # input (N, D) (GRAD_W)
    coef_ptr,                        # (N * M,) dz per entry (GRAD_W, GRAD_B)
    coef_q_ptr,                      # (N * M,) d cost / d log b per entry (GRAD_Q)
    scale_ptr,                       # (N,) grad_output per sample (HAS_SCALE)
    sorted_rows_ptr, order_ptr,      # (E,) the entries' rows sorted, and the entries in that order
    bounds_ptr,                      # (R + 1,): row r's run is [bounds[r], bounds[r + 1])
    gw_ptr, gb_ptr, gq_ptr,          # (R, D) contiguous, (R,), (R,): rows within one chunk
    part_w_ptr, part_b_ptr, part_q_ptr,  # (2, chunks, D), (2, chunks), (2, chunks): partials
    num_rows, num_entries, num_chunks, piece_entries, M, D,
    GRAD_W: tl.constexpr, GRAD_B: tl.constexpr, GRAD_Q: tl.constexpr, HAS_SCALE: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Programs [0, R): row r's head, its run up to the end of the chunk it starts in, written
    to the row itself when the run ends there (untouched rows: zeros), else to the head partial
    of that chunk. Programs R + c: chunk c's body, the entries of the run that reaches into
    chunk c from before it, up to the chunk's end, into chunk c's body partial."""
    g = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    head = g < num_rows
    chunk_start = (g - num_rows) * piece_entries
    r = tl.where(head, g, tl.load(sorted_rows_ptr + chunk_start, mask=~head, other=-1))
    first, end = _row_bounds(bounds_ptr, r, num_rows)
    start = tl.where(head, first, chunk_start)
    chunk = start // piece_entries
    # a head, or a body of a row's run that began before the chunk (padding and, with a range
    # check recorded, an index out of range is no row's)
    live = (r >= 0) & (r < num_rows) & (head | (first < chunk_start))
    stop = tl.minimum(end, (chunk + 1) * piece_entries)
    several = (end - first > 0) & (first // piece_entries != (end - 1) // piece_entries)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    acc_w = tl.zeros([BLOCK_E, BLOCK_D], ACC)
    acc_b = tl.zeros([BLOCK_E], ACC)
    acc_q = tl.zeros([BLOCK_E], ACC)
    for q0 in range(start, tl.where(live, stop, start), BLOCK_E):
        q = q0 + tl.arange(0, BLOCK_E)
        entry = tl.load(order_ptr + q, mask=q < stop, other=0)
        sample = entry // M
        if HAS_SCALE:
            s = tl.load(scale_ptr + sample, mask=q < stop, other=0).to(ACC)
        else:
            s = (q < stop).to(ACC)
        if GRAD_W or GRAD_B:
            c = tl.load(coef_ptr + entry, mask=q < stop, other=0).to(ACC) * s
            acc_b += c
            if GRAD_W:
                xv = tl.load(x_ptr + sample[:, None] * stride_xn + d[None, :] * stride_xd,
                             mask=(q < stop)[:, None] & (d < D)[None, :], other=0).to(ACC)
                acc_w += c[:, None] * xv
        if GRAD_Q:
            acc_q += tl.load(coef_q_ptr + entry, mask=q < stop, other=0).to(ACC) * s
    direct = live & head & ~several
    partial = live & ~direct
    # partial slot: the head's of its chunk (first half) or chunk c's body (second half)
    slot = tl.where(head, chunk, num_chunks + chunk)
    if GRAD_W:
        w_sum = tl.sum(acc_w, axis=0)
        # the masks compare d with a bound (the interpreter cannot mix a scalar mask in)
        tl.store(gw_ptr + r * D + d, round_to(w_sum, gw_ptr.dtype.element_ty),
                 mask=d < tl.where(direct, D, 0))
        tl.store(part_w_ptr + slot * D + d, w_sum, mask=d < tl.where(partial, D, 0))
    if pid_d == 0:
        if GRAD_B:
            b_sum = tl.sum(acc_b, axis=0)
            tl.store(gb_ptr + r, round_to(b_sum, gb_ptr.dtype.element_ty), mask=direct)
            tl.store(part_b_ptr + slot, b_sum, mask=partial)
        if GRAD_Q:
            q_sum = tl.sum(acc_q, axis=0)
            tl.store(gq_ptr + r, round_to(q_sum, gq_ptr.dtype.element_ty), mask=direct)
            tl.store(part_q_ptr + slot, q_sum, mask=partial)


@triton.jit
def _reduce_partials_kernel(
    sorted_rows_ptr, bounds_ptr, part_w_ptr, part_b_ptr, part_q_ptr, gw_ptr, gb_ptr, gq_ptr,
    num_rows, num_entries, num_chunks, piece_entries, D,
    GRAD_W: tl.constexpr, GRAD_B: tl.constexpr, GRAD_Q: tl.constexpr,
    ACC: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Per chunk c whose last run begins in it and goes on past it: that row's head partial
    and then its body partials, chunk by chunk, summed in that order into the row."""
    c = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    chunk_end = tl.minimum((c + 1) * piece_entries, num_entries)
    r = tl.load(sorted_rows_ptr + chunk_end - 1)
    first, end = _row_bounds(bounds_ptr, r, num_rows)
    if (r >= 0) & (r < num_rows) & (first >= c * piece_entries) & (end > chunk_end):
        pieces = (end - 1) // piece_entries - c + 1  # the head, then a body per chunk after it
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        acc_w = tl.zeros([BLOCK_S, BLOCK_D], ACC)
        acc_b = tl.zeros([BLOCK_S], ACC)
        acc_q = tl.zeros([BLOCK_S], ACC)
        for j0 in range(0, pieces, BLOCK_S):
            j = j0 + tl.arange(0, BLOCK_S)
            slot = tl.where(j == 0, c, num_chunks + c + j)
            if GRAD_W:
                acc_w += tl.load(part_w_ptr + slot[:, None] * D + d[None, :],
                                 mask=(j < pieces)[:, None] & (d < D)[None, :], other=0)
            if GRAD_B:
                acc_b += tl.load(part_b_ptr + slot, mask=j < pieces, other=0)
            if GRAD_Q:
                acc_q += tl.load(part_q_ptr + slot, mask=j < pieces, other=0)
        if GRAD_W:
            tl.store(gw_ptr + r * D + d, round_to(tl.sum(acc_w, axis=0), gw_ptr.dtype.element_ty),
                     mask=d < D)
        if pid_d == 0:
            if GRAD_B:
                tl.store(gb_ptr + r, round_to(tl.sum(acc_b, axis=0), gb_ptr.dtype.element_ty))
            if GRAD_Q:
                tl.store(gq_ptr + r, round_to(tl.sum(acc_q, axis=0), gq_ptr.dtype.element_ty))


def _block(size, limit):
    return min(limit, triton.next_power_of_2(max(size, 1)))


def _block_d(num_features, acc):
    """Feature chunk: the same tile bytes (so the same register budget) for fp32 and fp64."""
    return _block(num_features, MAX_BLOCK_D * 4 // acc.itemsize)


def piece_entries(num_entries):
    """Sorted entries per chunk, P: BLOCK_E times the smallest step count s with the E / P
    partials of a row holding every entry reduced in at most s steps of REDUCE_ROWS, so no
    program, piece (a run's part within one chunk, at most P entries) or reduction, runs more
    than s ~ sqrt(E / (BLOCK_E * REDUCE_ROWS)) steps, whatever the row lengths."""
    steps = max(1, math.ceil(math.sqrt(num_entries / (SCATTER_BLOCK_E * REDUCE_ROWS))))
    return SCATTER_BLOCK_E * steps


def _scatter(x, rows, num_rows, coef, coef_q, scale, grad_w, grad_b, grad_q, acc):
    """grad_w[r] = sum s_e coef_e x[sample(e)], grad_b[r] = sum s_e coef_e, grad_q[r] = sum s_e
    coef_q_e over the entries e on row r (each output may be None), s_e the entry's sample's
    grad_output (`scale` (N,), or None for 1)."""
    if num_rows == 0:
        return
    device, num_features = rows.device, x.shape[1]
    num_entries = rows.numel()
    per_piece = piece_entries(num_entries)
    num_chunks = triton.cdiv(num_entries, per_piece)
    sorted_rows, order = torch.sort(rows.reshape(-1), stable=True)
    bounds = torch.searchsorted(sorted_rows, torch.arange(num_rows + 1, device=device))
    # the partials: each chunk's head (its last run, when that goes on past it), then bodies
    part_w = (torch.empty(2 * num_chunks, num_features, device=device, dtype=acc)
              if grad_w is not None else None)
    part_b, part_q = (torch.empty(2 * num_chunks, device=device, dtype=acc) if g is not None
                      else None for g in (grad_b, grad_q))
    block_d = _block_d(num_features, acc)
    # at least one feature chunk even for D = 0: its first program writes the bias gradients
    chunks_d = max(1, triton.cdiv(num_features, block_d)) if grad_w is not None else 1
    flags = dict(GRAD_W=grad_w is not None, GRAD_B=grad_b is not None, GRAD_Q=grad_q is not None,
                 ACC=triton_accumulation(acc), BLOCK_D=block_d, num_warps=NUM_WARPS)
    any_out = next(t for t in (grad_w, grad_b, grad_q) if t is not None)

    def pointer(t):  # a tensor the kernel does not read (its flag is off) still takes a pointer
        return any_out if t is None else t

    _scatter_pieces_kernel[(num_rows + num_chunks, chunks_d)](
        x, x.stride(0), x.stride(1), pointer(coef), pointer(coef_q), pointer(scale),
        sorted_rows, order, bounds, pointer(grad_w), pointer(grad_b), pointer(grad_q),
        pointer(part_w), pointer(part_b), pointer(part_q),
        num_rows, num_entries, num_chunks, per_piece, rows.shape[1], num_features,
        HAS_SCALE=scale is not None, BLOCK_E=SCATTER_BLOCK_E, **flags)
    if num_chunks > 1:  # a run goes on past its chunk only where there is a next one
        _reduce_partials_kernel[(num_chunks - 1, chunks_d)](
            sorted_rows, bounds, pointer(part_w), pointer(part_b), pointer(part_q),
            pointer(grad_w), pointer(grad_b), pointer(grad_q),
            num_rows, num_entries, num_chunks, per_piece, num_features,
            BLOCK_S=REDUCE_ROWS, **flags)


def _forward(input, weight, bias, entries, noise_log_probs, num_noise, divisor, needs,
             grad_x_dtype):
    """The forward launch: (loss (N,), dz, dlogb, grad_x, rows), each None where not wanted, in
    the accumulation dtype but grad_x (`grad_x_dtype`), the gradients divided by `divisor`;
    rows (N, M) as the scatter reads them (a default tree's written by the kernel)."""
    out_dtype = _out_dtype(input, weight, bias)
    acc = accumulation_dtype(out_dtype)
    need_x, need_w, need_b, need_q = needs
    nce = noise_log_probs is not None
    tree = isinstance(entries, DefaultTree)
    batch, num_entries = entries.shape
    rows, codes = (None, None) if tree else (entries.rows, entries.codes)
    if tree and (need_w or need_b):
        rows = torch.empty(entries.shape, device=input.device, dtype=torch.int64)
    num_features = input.shape[1]
    loss = torch.empty(batch, device=input.device, dtype=acc)
    dz = (torch.empty(entries.shape, device=input.device, dtype=acc)
          if need_x or need_w or need_b else None)
    dlogb = torch.empty(entries.shape, device=input.device, dtype=acc) if need_q else None
    grad_x = (torch.empty(batch, num_features, device=input.device, dtype=grad_x_dtype)
              if need_x else None)
    block_d = _block_d(num_features, acc)
    checks = [(index, message) for index, message in enumerate(entries.index_errors)
              if message is not None]
    verdicts = torch.ones(2, dtype=torch.int32, device=input.device) if checks else loss
    if batch > 0:
        _gathered_logistic_fwd_kernel[(batch,)](
            input, input.stride(0), input.stride(1), weight, weight.stride(0), weight.stride(1),
            bias.contiguous() if bias is not None else loss, loss if rows is None else rows,
            loss if codes is None else codes, entries.label if tree else loss,
            entries.num_classes if tree else 0, weight.shape[0], 0 if nce else -1, verdicts,
            noise_log_probs.contiguous() if nce else loss, num_noise, divisor, loss,
            loss if dz is None else dz, loss if dlogb is None else dlogb,
            loss if grad_x is None else grad_x, num_entries, num_features,
            NCE=nce, HAS_BIAS=bias is not None, STORE_DZ=dz is not None,
            STORE_DLOGB=dlogb is not None, GRAD_X=need_x, ONE_CHUNK=num_features <= block_d,
            TREE=tree, STORE_ROWS=tree and rows is not None, CHECK_ROWS=bool(checks),
            ACC=triton_accumulation(acc), BLOCK_M=_block(num_entries, MAX_BLOCK_M),
            BLOCK_D=block_d, num_warps=NUM_WARPS)
    for index, message in checks:  # queued: no host sync (the CPU checks before any launch)
        torch._assert_async(verdicts[index], message)
    return loss, dz, dlogb, grad_x, rows


def _out_dtype(input, weight, bias):
    out_dtype = torch.promote_types(input.dtype, weight.dtype)
    return out_dtype if bias is None else torch.promote_types(out_dtype, bias.dtype)


def _buffer_like(tensor):
    """A contiguous gradient buffer of `tensor`'s shape and dtype (the scatter writes rows)."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)


def _reduced(loss, reduction, input, weight, bias):
    result = loss if reduction == "none" else reduce(loss, reduction)
    return result.to(loss_dtype(_out_dtype(input, weight, bias), result.device))


def _precomputed(reduction, needs, num_noise, entries, input, weight, bias, noise_log_probs):
    """'mean' and 'sum' (or no gradient at all): the forward launch and the scatter write every
    gradient in its final dtype, which the shared backward scales by grad_output."""
    divisor = entries.shape[0] if reduction == "mean" else 1
    loss, dz, dlogb, grad_x, rows = _forward(input, weight, bias, entries, noise_log_probs,
                                             num_noise, max(divisor, 1), needs, input.dtype)
    _, need_w, need_b, need_q = needs
    grad_w, grad_b, grad_q = (_buffer_like(t) if need else None
                              for t, need in zip((weight, bias, noise_log_probs), needs[1:]))
    if need_w or need_b or need_q:
        _scatter(input, rows, weight.shape[0], dz, dlogb, None, grad_w, grad_b, grad_q,
                 accumulation_dtype(_out_dtype(input, weight, bias)))
    return Sweep((_reduced(loss, reduction, input, weight, bias),),
                 [grad_x, grad_w, grad_b, grad_q])


class _PerSampleGatheredLogistic(torch.autograd.Function):
    """reduction='none' with gradients: the forward keeps dz and d loss / d x unscaled, the
    backward scales them by each sample's grad_output (module header)."""

    @staticmethod
    def forward(ctx, needs, num_noise, entries, input, weight, bias, noise_log_probs):
        acc = accumulation_dtype(_out_dtype(input, weight, bias))
        loss, dz, dlogb, grad_x, rows = _forward(input, weight, bias, entries, noise_log_probs,
                                                 num_noise, 1, needs, acc)
        ctx.needs, ctx.acc, ctx.x_dtype, ctx.num_rows = needs, acc, input.dtype, weight.shape[0]
        ctx.specs = [(t.shape, t.dtype) if need else None
                     for t, need in zip((weight, bias, noise_log_probs), needs[1:])]
        empty = torch.empty(0)
        ctx.save_for_backward(input if needs[1] else empty, empty if rows is None else rows,
                              *(empty if t is None else t for t in (dz, dlogb, grad_x)))
        return _reduced(loss, "none", input, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        input, rows, dz, dlogb, grad_x = ctx.saved_tensors
        # the kernels index it by sample: a sum's expanded grad_output (stride 0) made whole
        scale = grad_output.to(ctx.acc).reshape(-1).contiguous()
        grad_x = scale_gradient(grad_x, scale.view(-1, 1), ctx.x_dtype) if ctx.needs[0] else None
        grad_w, grad_b, grad_q = (None if spec is None else
                                  torch.empty(spec[0], dtype=spec[1], device=rows.device)
                                  for spec in ctx.specs)
        if any(ctx.needs[1:]):
            _scatter(input, rows, ctx.num_rows, dz, dlogb, scale, grad_w, grad_b, grad_q, ctx.acc)
        return (None, None, None, grad_x, grad_w, grad_b, grad_q)


@dataclasses.dataclass
class Paths:
    """Each sample's entries as given: rows (N, M) int64 of W (-1: padding) and, for
    hsigmoid, codes (N, M) their target bits (NCE: None, the first entry is the target).
    index_errors: where the rows' range check is the call's (CUDA), its message (NCE: the
    target's, then the noise samples'), else None; the forward kernel records it as it reads
    the rows, in [-1, R) (NCE: [0, R))."""
    rows: torch.Tensor
    codes: typing.Optional[torch.Tensor] = None
    index_errors: tuple = ()

    @property
    def shape(self):
        return self.rows.shape


@dataclasses.dataclass
class DefaultTree:
    """hsigmoid's default tree, its paths computed in the forward kernel from the labels (N,)
    int64; the kernel writes the rows out only where the scatter reads them. index_errors: as
    Paths', for the labels' range check, [0, num_classes)."""
    label: torch.Tensor
    num_classes: int
    index_errors: tuple = ()

    @property
    def shape(self):  # the longest code is 2 * num_classes - 1
        return (self.label.shape[0], (2 * self.num_classes - 1).bit_length() - 1)


def gathered_logistic(input, weight, bias, entries, noise_log_probs, num_noise, reduction):
    """The shared entry point of hsigmoid_loss and nce_loss: `entries` (Paths or DefaultTree)
    name each sample's rows of W, noise_log_probs (NCE) or None (hsigmoid)."""
    # a (nodes, 1) bias as a vector; a vector stays the caller's tensor (precomputed_gradient)
    bias = bias.reshape(-1) if bias is not None and bias.dim() > 1 else bias
    needs = wanted_gradients(input, weight, bias, noise_log_probs)
    if reduction == "none" and any(needs):
        return _PerSampleGatheredLogistic.apply(needs, num_noise, entries, input, weight, bias,
                                                noise_log_probs)
    return precomputed_gradient(
        lambda *inputs: _precomputed(reduction, needs, num_noise, entries, *inputs),
        input, weight, bias, noise_log_probs)
