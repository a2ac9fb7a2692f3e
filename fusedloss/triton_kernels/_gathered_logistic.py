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
The rows and target bits come from the family modules: hsigmoid's tree paths, NCE's classes.

Passes:
  forward  one program per sample. Pass 1 loops over its entries in tiles of BLOCK_M and over
           the features in chunks of BLOCK_D, gathering the W rows, and finishes z, the cost
           and dz_j = d cost_j / d z_j (NCE also d cost_j / d log b_j). Pass 2 (only when x
           requires grad) re-reads the same W rows, mostly from cache, for
           d loss / d x = sum_j dz_j W[r_j].
  backward scales d loss / d x by grad_output (scalar or per sample; 'mean' folds 1/N into
           it) in one pass, the cast to the input's dtype included, then the weight/bias
           gradients are a deterministic scatter without atomics, which applies grad_output to
           dz as it reads it:
           the (sample, entry) pairs are stably sorted by row (torch.sort), searchsorted gives
           each row's segment, and one program per (W row, feature chunk) sums its segment in
           a fixed order, dW[r] = sum dz_e x[sample(e)], db[r] = sum dz_e, writing zeros for
           untouched rows (so dW needs no memset). NCE's noise log-prob gradient, when asked
           for, is the same scatter of d cost / d log b. No atomics anywhere: the same input
           gives the same bits run after run.
Kept between passes: per-sample loss, d loss / d x (N, D) and dz (N, M) in the accumulation
dtype (fp32, fp64 for fp64), x itself for the scatter. Recomputed: the W rows of pass 2.
Limit: a row visited by many samples (the default tree's root: all N) is summed serially by
one program per feature chunk, BLOCK_E entries a step, so its program runs N / BLOCK_E steps.
"""
import torch
import triton
import triton.language as tl

from .._reduction import reduce
from ._common import GPU_LAUNCH_PARAMS, accumulation_dtype, round_to, triton_accumulation
from ._math import sigmoids_and_logs
from .._autocast import loss_dtype
from ._precomputed_gradient import scale_gradient, wanted_gradients

# Launch sizes of the gathered-row kernels (here, not in _common: only hsigmoid and NCE gather
# rows). A 32 x 64 fp32 tile of gathered rows needs ~150 registers a thread at 4 warps and no
# spills (ptxas, sm_90); fp64 halves the columns. The interpreter's are tiny so small tests run
# every chunk loop.
MAX_BLOCK_D = 64 if GPU_LAUNCH_PARAMS else 32     # feature columns per step (fp32)
MAX_BLOCK_M = 32 if GPU_LAUNCH_PARAMS else 4      # entries (path nodes / classes) per step
SCATTER_BLOCK_E = 32 if GPU_LAUNCH_PARAMS else 4  # segment entries per step of the scatter
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


@triton.jit
def _gathered_logistic_fwd_kernel(
    x_ptr, stride_xn, stride_xd,     # input (N, D)
    w_ptr, stride_wr, stride_wd,     # weight (R, D)
    b_ptr,                           # bias (R,) (HAS_BIAS)
    rows_ptr,                        # (N, M) int64 rows of W per sample, -1 = padding
    codes_ptr,                       # (N, M) int64 target bits (hsigmoid; NCE: y = [j == 0])
    logq_ptr,                        # (R,) noise log-probabilities (NCE)
    num_noise,                       # k (NCE)
    loss_ptr,                        # (N,) per-sample loss, accumulation dtype
    dz_ptr,                          # (N, M) d cost / d z (STORE_DZ)
    dlogb_ptr,                       # (N, M) d cost / d log b (STORE_DLOGB, NCE)
    gx_ptr,                          # (N, D) d loss / d x (GRAD_X), contiguous
    M, D,
    NCE: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_DZ: tl.constexpr,
    STORE_DLOGB: tl.constexpr, GRAD_X: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + n * stride_xn
    loss = tl.zeros([BLOCK_M], ACC)
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        row = tl.load(rows_ptr + n * M + m, mask=m < M, other=-1)
        on = row >= 0
        row = tl.where(on, row, 0)
        z = tl.zeros([BLOCK_M], ACC)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            # cast right after each load: the interpreter keeps bf16 as raw bits
            xv = tl.load(x_row + d * stride_xd, mask=d < D, other=0).to(ACC)
            w = tl.load(w_ptr + row[:, None] * stride_wr + d[None, :] * stride_wd,
                        mask=on[:, None] & (d < D)[None, :], other=0).to(ACC)
            z += tl.sum(w * xv[None, :], axis=1)
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
            y = tl.maximum(tl.load(codes_ptr + n * M + m, mask=on, other=0), 0).to(ACC)
            cost, dz = _logistic_cost(z, y)
        loss += tl.where(on, cost, 0)
        if STORE_DZ:
            tl.store(dz_ptr + n * M + m, tl.where(on, dz, 0), mask=m < M)
        if STORE_DLOGB:
            tl.store(dlogb_ptr + n * M + m, -dt, mask=m < M)
    tl.store(loss_ptr + n, tl.sum(loss, axis=0))

    if GRAD_X:
        tl.debug_barrier()  # dz was stored by other threads of this program
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
            for m0 in range(0, M, BLOCK_M):
                m = m0 + tl.arange(0, BLOCK_M)
                row = tl.load(rows_ptr + n * M + m, mask=m < M, other=-1)
                on = row >= 0
                dz = tl.load(dz_ptr + n * M + m, mask=on, other=0)
                w = tl.load(w_ptr + row[:, None] * stride_wr + d[None, :] * stride_wd,
                            mask=on[:, None] & (d < D)[None, :], other=0).to(ACC)
                acc += dz[:, None] * w
            tl.store(gx_ptr + n * D + d, tl.sum(acc, axis=0), mask=d < D)


@triton.jit
def _segment_scatter_kernel(
    x_ptr, stride_xn, stride_xd,     # input (N, D) (GRAD_W)
    coef_ptr,                        # (N * M,) per-entry coefficient, before grad_output
    scale_ptr, stride_scale,         # grad_output per sample (stride 0: one scalar)
    order_ptr,                       # entries stably sorted by row
    bounds_ptr,                      # (R + 1,): row r's entries are order[bounds[r]:bounds[r + 1]]
    gw_ptr,                          # (R, D) sum coef_e x[sample(e)], contiguous (GRAD_W)
    gb_ptr,                          # (R,) sum coef_e (GRAD_B)
    M, D,
    GRAD_W: tl.constexpr, GRAD_B: tl.constexpr,
    ACC: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    start = tl.load(bounds_ptr + r)
    end = tl.load(bounds_ptr + r + 1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    acc_w = tl.zeros([BLOCK_E, BLOCK_D], ACC)
    acc_b = tl.zeros([BLOCK_E], ACC)
    for q0 in range(start, end, BLOCK_E):
        q = q0 + tl.arange(0, BLOCK_E)
        entry = tl.load(order_ptr + q, mask=q < end, other=0)
        c = (tl.load(coef_ptr + entry, mask=q < end, other=0).to(ACC)
             * tl.load(scale_ptr + (entry // M) * stride_scale, mask=q < end, other=0).to(ACC))
        if GRAD_W:
            xv = tl.load(x_ptr + (entry // M)[:, None] * stride_xn + d[None, :] * stride_xd,
                         mask=(q < end)[:, None] & (d < D)[None, :], other=0).to(ACC)
            acc_w += c[:, None] * xv
        acc_b += c
    if GRAD_W:
        tl.store(gw_ptr + r * D + d, round_to(tl.sum(acc_w, axis=0), gw_ptr.dtype.element_ty),
                 mask=d < D)
    if GRAD_B:
        tl.store(gb_ptr + r, round_to(tl.sum(acc_b, axis=0), gb_ptr.dtype.element_ty),
                 mask=pid_d == 0)


def _block(size, limit):
    return min(limit, triton.next_power_of_2(max(size, 1)))


def _block_d(num_features, acc):
    """Feature chunk: the same tile bytes (so the same register budget) for fp32 and fp64."""
    return _block(num_features, MAX_BLOCK_D * 4 // acc.itemsize)


def _scatter(x, coef, scale, order, bounds, grad_w, grad_b, acc):
    """grad_w[r] = sum s coef_e x[sample(e)], grad_b[r] = sum s coef_e over row r's segment
    (either may be None), s the entry's sample's grad_output factor in `scale` ((N,) or (1,))."""
    num_rows, num_features = bounds.shape[0] - 1, x.shape[1]
    block_d = _block_d(num_features, acc)
    # at least one feature chunk even for D = 0: its first program writes the bias gradient
    grid = (num_rows, max(1, triton.cdiv(num_features, block_d)) if grad_w is not None else 1)
    if num_rows == 0:
        return
    _segment_scatter_kernel[grid](
        x, x.stride(0), x.stride(1), coef, scale, scale.stride(0) if scale.numel() > 1 else 0,
        order, bounds,
        coef if grad_w is None else grad_w, coef if grad_b is None else grad_b,
        coef.shape[1], num_features,
        GRAD_W=grad_w is not None, GRAD_B=grad_b is not None, ACC=triton_accumulation(acc),
        BLOCK_E=SCATTER_BLOCK_E, BLOCK_D=block_d, num_warps=NUM_WARPS)


class _GatheredLogistic(torch.autograd.Function):
    """Loss, d/dx and per-entry dz in one forward launch; the backward scales them by
    grad_output and scatters dz into the weight/bias (and NCE's noise log-prob) gradients."""

    @staticmethod
    def forward(ctx, reduction, needs, num_noise, input, weight, bias, rows, codes,
                noise_log_probs):
        out_dtype = torch.promote_types(input.dtype, weight.dtype)
        if bias is not None:
            out_dtype = torch.promote_types(out_dtype, bias.dtype)
        acc = accumulation_dtype(out_dtype)
        need_x, need_w, need_b, need_q = ctx.needs = needs
        nce = noise_log_probs is not None
        batch, num_entries = rows.shape
        num_features = input.shape[1]
        loss = torch.empty(batch, device=input.device, dtype=acc)
        dz = torch.empty_like(rows, dtype=acc) if need_x or need_w or need_b else None
        dlogb = torch.empty_like(rows, dtype=acc) if need_q else None
        grad_x = torch.empty(batch, num_features, device=input.device, dtype=acc) if need_x else None
        bias_flat = bias.contiguous() if bias is not None else None
        logq = noise_log_probs.contiguous() if nce else None
        if batch > 0:
            _gathered_logistic_fwd_kernel[(batch,)](
                input, input.stride(0), input.stride(1), weight, weight.stride(0), weight.stride(1),
                bias_flat if bias is not None else loss, rows, rows if codes is None else codes,
                logq if nce else loss, num_noise, loss,
                loss if dz is None else dz, loss if dlogb is None else dlogb,
                loss if grad_x is None else grad_x, num_entries, num_features,
                NCE=nce, HAS_BIAS=bias is not None, STORE_DZ=dz is not None,
                STORE_DLOGB=dlogb is not None, GRAD_X=need_x, ACC=triton_accumulation(acc),
                BLOCK_M=_block(num_entries, MAX_BLOCK_M), BLOCK_D=_block_d(num_features, acc),
                num_warps=NUM_WARPS)
        ctx.reduction, ctx.acc = reduction, acc
        ctx.shapes = [(t.shape, t.dtype) if t is not None else None
                      for t in (input, weight, bias, noise_log_probs)]
        empty = torch.empty(0)
        ctx.save_for_backward(input if need_w else empty, rows, *(empty if t is None else t
                                                                   for t in (dz, dlogb, grad_x)))
        result = loss if reduction == "none" else reduce(loss, reduction)
        return result.to(loss_dtype(out_dtype, result.device))

    @staticmethod
    def backward(ctx, grad_output):
        input, rows, dz, dlogb, grad_x = ctx.saved_tensors
        need_x, need_w, need_b, need_q = ctx.needs
        batch = rows.shape[0]
        grad_output = grad_output.to(ctx.acc)
        if ctx.reduction == "mean":
            grad_output = grad_output / batch
        scale = grad_output.reshape(-1)  # (N,) for 'none', else (1,)
        (_, x_dtype), (w_shape, w_dtype), bias_info, q_info = ctx.shapes
        grads = {}
        if need_x:
            grads["x"] = scale_gradient(grad_x, scale.view(-1, 1), x_dtype)
        if need_w or need_b or need_q:
            # deterministic scatter: segments of the entries stably sorted by row
            sorted_rows, order = torch.sort(rows.reshape(-1), stable=True)
            num_rows = w_shape[0]
            bounds = torch.searchsorted(sorted_rows, torch.arange(num_rows + 1, device=rows.device))
            device = rows.device
            if need_w or need_b:
                grads["w"] = torch.empty(w_shape, device=device, dtype=w_dtype) if need_w else None
                grads["b"] = torch.empty(num_rows, device=device, dtype=bias_info[1]) if need_b else None
                _scatter(input, dz, scale, order, bounds, grads["w"], grads["b"], ctx.acc)
            if need_q:
                grads["q"] = torch.empty(num_rows, device=device, dtype=q_info[1])
                _scatter(input, dlogb, scale, order, bounds, None, grads["q"], ctx.acc)
        return (None, None, None, grads.get("x"), grads.get("w"), grads.get("b"), None, None,
                grads.get("q"))


def gathered_logistic(input, weight, bias, rows, codes, noise_log_probs, num_noise, reduction):
    """The shared entry point of hsigmoid_loss and nce_loss: rows (N, M) int64 of W per sample
    (-1: padding), codes (N, M) the target bits (hsigmoid) or None with noise_log_probs (NCE)."""
    bias = bias.reshape(-1) if bias is not None else None
    needs = wanted_gradients(input, weight, bias, noise_log_probs)
    return _GatheredLogistic.apply(reduction, needs, num_noise, input, weight, bias,
                                   rows.contiguous(), codes, noise_log_probs)
