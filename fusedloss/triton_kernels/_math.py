"""The jit math every kernel family shares, each written once in its overflow-free form.

Nothing here needs libdevice: log1p is computed with plain log and exp, tanh and the sigmoids
from exp of a non-positive argument, and every log-sum-exp takes an all -inf line to -inf (or
its max to 0) rather than to NaN.
"""
import triton
import triton.language as tl


@triton.jit
def log1p(e):
    """log(1 + e) to a few ulp for e > -1 (Goldberg): the rounding error of 1 + e cancels in
    log(u) / (u - 1); the inner `where` keeps 0 / 0 out of the branch not taken."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def sign(d):
    """torch's sign: 0 at 0 (so the L1 gradient at d == 0 is 0)."""
    return tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(d.dtype)


@triton.jit
def sigmoids_and_logs(x):
    """sigmoid(x), sigmoid(-x), log sigmoid(x), log sigmoid(-x), each without overflow or
    cancellation (sigmoid(-x) is not computed as 1 - sigmoid(x)); softplus(x) is the last one
    negated."""
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    positive = x >= 0
    softplus_tail = log1p(e)
    zero = tl.zeros_like(x)
    return (tl.where(positive, r, e * r), tl.where(positive, e * r, r),
            tl.minimum(x, zero) - softplus_tail, tl.minimum(-x, zero) - softplus_tail)


@triton.jit
def tanh(x):
    """tanh from exp of a non-positive argument: finite for every x, -inf maps to -1."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def pow_nonnegative(m, g):
    """m ** g for m >= 0 (tl has no float pow), with pow's values at m == 0: 1 for g == 0, 0 for
    g > 0, inf for g < 0."""
    at_zero = tl.where(g == 0, 1.0, tl.where(g > 0, 0.0, float("inf")))
    return tl.where(m > 0, tl.exp(g * tl.log(m)), at_zero).to(m.dtype)


@triton.jit
def subtract_max(x):
    """(x - max(x), max(x)), the max taken as 0 when every entry is -inf: keeps a log-space
    vector (CTC and CRF recursions) near 0 without turning an all -inf vector into NaN."""
    m = tl.max(x, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    return x - m, m


@triton.jit
def logsumexp(x, AXIS: tl.constexpr):
    """logsumexp of a tile along AXIS; an all -inf line (padding, forbidden tags) gives -inf."""
    m = tl.max(x, axis=AXIS)
    shift = tl.where(m == float("-inf"), 0.0, m)
    return shift + tl.log(tl.sum(tl.exp(x - tl.expand_dims(shift, AXIS)), axis=AXIS))


@triton.jit
def logsumexp3(a, b, c):
    """log(e^a + e^b + e^c) elementwise; all -inf gives -inf, never NaN."""
    m = tl.maximum(tl.maximum(a, b), c)
    m = tl.where(m == float("-inf"), 0.0, m)
    return m + tl.log(tl.exp(a - m) + tl.exp(b - m) + tl.exp(c - m))
