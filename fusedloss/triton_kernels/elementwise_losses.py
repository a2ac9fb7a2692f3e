"""The math of each elementwise loss, for the generic kernel in elementwise.py.

A loss is one small @triton.jit function of up to three operands `a, b, c` (already loaded and
cast to the accumulation dtype, in the order of the loss's Python signature) and two scalar
parameters `p0, p1`. It returns `(loss, dloss/da, dloss/db, dloss/dc)` for one element, before
any weight or reduction scaling; derivatives of operands a loss does not have are returned as 0
and never stored. `apply_loss` picks the loss from the constexpr id LOSS, so each compiled
kernel contains only its own loss. Adding a loss: write its function, give it an id in LOSS_IDS
and a branch in `apply_loss`.

The logs and sigmoids are written in their overflow-free forms (log sigmoid(x) = min(x, 0) -
log1p(exp(-|x|))) and log1p is computed with plain log/exp so nothing here needs libdevice.
"""
import triton
import triton.language as tl


LOSS_IDS = {
    "binary_cross_entropy_with_logits": 0,
    "binary_cross_entropy": 1,
    "sigmoid_focal_loss": 2,
    "smooth_l1_loss": 3,
    "huber_loss": 4,
    "l1_loss": 5,
    "mse_loss": 6,
    "margin_ranking_loss": 7,
    "rank_loss": 8,
}


@triton.jit
def _log1p(e):
    # log(1 + e) to a few ulp for e > -1: the rounding error of 1 + e cancels in log(u) / (u - 1)
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _sign(d):
    # torch's sign: 0 at 0, so the L1 gradient at d == 0 is 0
    return tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(d.dtype)


@triton.jit
def _sigmoids_and_logs(x):
    """sigmoid(x), sigmoid(-x), log sigmoid(x), log sigmoid(-x), each without overflow or
    cancellation (sigmoid(-x) is not computed as 1 - sigmoid(x))."""
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    positive = x >= 0
    softplus_tail = _log1p(e)
    zero = tl.zeros_like(x)
    return (tl.where(positive, r, e * r), tl.where(positive, e * r, r),
            tl.minimum(x, zero) - softplus_tail, tl.minimum(-x, zero) - softplus_tail)


@triton.jit
def _pow(m, g):
    # m ** g for m >= 0, with pow's values at m == 0 (1 for g == 0, 0 for g > 0, inf for g < 0)
    at_zero = tl.where(g == 0, 1.0, tl.where(g > 0, 0.0, float("inf")))
    return tl.where(m > 0, tl.exp(g * tl.log(m)), at_zero).to(m.dtype)


@triton.jit
def bce_with_logits(x, y, pos_weight, p0, p1):
    """-[pos_weight * y * log sigmoid(x) + (1 - y) * log sigmoid(-x)] (pos_weight 1 when absent)."""
    s, s_neg, log_s, log_s_neg = _sigmoids_and_logs(x)
    loss = -(pos_weight * y * log_s + (1 - y) * log_s_neg)
    dx = (1 - y) * s - pos_weight * y * s_neg
    return loss, dx, log_s_neg - pos_weight * log_s, -y * log_s


@triton.jit
def bce(p, y, c, p0, p1):
    """-[y * max(log p, -100) + (1 - y) * max(log(1 - p), -100)]. The input gradient is torch's,
    (p - y) / max(p (1 - p), 1e-12), finite at p = 0 and 1; the target gradient is the exact
    derivative of the clamped loss (torch's -logit(p) is infinite there)."""
    log_p = tl.maximum(tl.log(p), -100.0)
    log_q = tl.maximum(_log1p(-p), -100.0)
    loss = -(y * log_p + (1 - y) * log_q)
    dp = (p - y) / tl.maximum((1 - p) * p, 1e-12)
    return loss, dp, log_q - log_p, tl.zeros_like(p)


@triton.jit
def sigmoid_focal(x, y, c, alpha, gamma):
    """torchvision: alpha_t * (1 - p_t)**gamma * BCE-with-logits; alpha < 0 means alpha_t = 1."""
    s, s_neg, log_s, log_s_neg = _sigmoids_and_logs(x)
    ce = -(y * log_s + (1 - y) * log_s_neg)
    m = s * (1 - y) + s_neg * y  # 1 - p_t
    m_g = _pow(m, gamma)
    dm_g = tl.where(gamma == 0, 0.0, gamma * _pow(m, gamma - 1)).to(m.dtype)  # d m**gamma / dm
    alpha_t = tl.where(alpha >= 0, alpha * y + (1 - alpha) * (1 - y), 1.0).to(x.dtype)
    dalpha_t = tl.where(alpha >= 0, 2 * alpha - 1, 0.0).to(x.dtype)  # d alpha_t / dy
    dx = alpha_t * (((1 - y) * s - y * s_neg) * m_g + ce * dm_g * (1 - 2 * y) * s * s_neg)
    # d ce / dy = log sigmoid(-x) - log sigmoid(x) = -x; d m / dy = sigmoid(-x) - sigmoid(x)
    dy = alpha_t * (-x * m_g + ce * dm_g * (s_neg - s)) + dalpha_t * ce * m_g
    return alpha_t * ce * m_g, dx, dy, tl.zeros_like(x)


@triton.jit
def smooth_l1(x, y, c, beta, p1):
    """0.5 d**2 / beta inside |d| < beta, |d| - beta / 2 outside (beta = 0: never inside, so L1)."""
    d = x - y
    inside = tl.abs(d) < beta
    loss = tl.where(inside, 0.5 * d * d / beta, tl.abs(d) - 0.5 * beta)
    g = tl.where(inside, d / beta, _sign(d))
    return loss, g, -g, tl.zeros_like(d)


@triton.jit
def huber(x, y, c, delta, p1):
    """0.5 d**2 inside |d| < delta, delta * (|d| - delta / 2) outside."""
    d = x - y
    inside = tl.abs(d) < delta
    loss = tl.where(inside, 0.5 * d * d, delta * (tl.abs(d) - 0.5 * delta))
    g = tl.where(inside, d, delta * _sign(d))
    return loss, g, -g, tl.zeros_like(d)


@triton.jit
def l1(x, y, c, p0, p1):
    d = x - y
    g = _sign(d)
    return tl.abs(d), g, -g, tl.zeros_like(d)


@triton.jit
def mse(x, y, c, p0, p1):
    d = x - y
    return d * d, 2 * d, -2 * d, tl.zeros_like(d)


@triton.jit
def margin_ranking(x1, x2, y, margin, p1):
    """max(0, -y (x1 - x2) + margin); the gradient flows where the hinge argument is >= 0, as
    through torch's clamp_min."""
    diff = x1 - x2
    hinge = -y * diff + margin
    active = hinge >= 0
    zero = tl.zeros_like(diff)
    return (tl.maximum(hinge, zero), tl.where(active, -y, zero), tl.where(active, y, zero),
            tl.where(active, -diff, zero))


@triton.jit
def rank(label, left, right, p0, p1):
    """RankNet: softplus(left - right) - label * (left - right)."""
    d = left - right
    s, _, _, log_s_neg = _sigmoids_and_logs(d)
    loss = -log_s_neg - label * d  # softplus(d) = -log sigmoid(-d)
    return loss, -d, s - label, label - s


@triton.jit
def apply_loss(LOSS: tl.constexpr, a, b, c, p0, p1):
    if LOSS == 0:
        loss, da, db, dc = bce_with_logits(a, b, c, p0, p1)
    elif LOSS == 1:
        loss, da, db, dc = bce(a, b, c, p0, p1)
    elif LOSS == 2:
        loss, da, db, dc = sigmoid_focal(a, b, c, p0, p1)
    elif LOSS == 3:
        loss, da, db, dc = smooth_l1(a, b, c, p0, p1)
    elif LOSS == 4:
        loss, da, db, dc = huber(a, b, c, p0, p1)
    elif LOSS == 5:
        loss, da, db, dc = l1(a, b, c, p0, p1)
    elif LOSS == 6:
        loss, da, db, dc = mse(a, b, c, p0, p1)
    elif LOSS == 7:
        loss, da, db, dc = margin_ranking(a, b, c, p0, p1)
    elif LOSS == 8:
        loss, da, db, dc = rank(a, b, c, p0, p1)
    else:
        tl.static_assert(False, "unknown LOSS id")
    return loss, da, db, dc
