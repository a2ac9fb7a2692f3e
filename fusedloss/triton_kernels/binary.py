"""Binary losses on the generic elementwise kernel (_elementwise.py): BCE with logits, BCE on
probabilities and torchvision's sigmoid focal loss, each its jit math plus its launcher.

The logs and sigmoids are the overflow-free forms of _math.py (log sigmoid(x) = min(x, 0) -
log1p(exp(-|x|))); the input gradients are written in the same sweep as the loss.
"""
import triton
import triton.language as tl

from ._elementwise import elementwise_loss
from ._math import log1p, pow_nonnegative, sigmoids_and_logs


@triton.jit
def bce_with_logits(x, y, pos_weight, p0, p1):
    """-[pos_weight * y * log sigmoid(x) + (1 - y) * log sigmoid(-x)] (pos_weight 1 when absent)."""
    s, s_neg, log_s, log_s_neg = sigmoids_and_logs(x)
    loss = -(pos_weight * y * log_s + (1 - y) * log_s_neg)
    dx = (1 - y) * s - pos_weight * y * s_neg
    return loss, dx, log_s_neg - pos_weight * log_s, -y * log_s


@triton.jit
def bce(p, y, c, p0, p1):
    """-[y * max(log p, -100) + (1 - y) * max(log(1 - p), -100)]. The input gradient is torch's,
    (p - y) / max(p (1 - p), 1e-12), finite at p = 0 and 1; the target gradient is the exact
    derivative of the clamped loss (torch's -logit(p) is infinite there)."""
    log_p = tl.maximum(tl.log(p), -100.0)
    log_q = tl.maximum(log1p(-p), -100.0)
    loss = -(y * log_p + (1 - y) * log_q)
    dp = (p - y) / tl.maximum((1 - p) * p, 1e-12)
    return loss, dp, log_q - log_p, tl.zeros_like(p)


@triton.jit
def sigmoid_focal(x, y, c, alpha, gamma):
    """torchvision: alpha_t * (1 - p_t)**gamma * BCE-with-logits; alpha < 0 means alpha_t = 1."""
    s, s_neg, log_s, log_s_neg = sigmoids_and_logs(x)
    ce = -(y * log_s + (1 - y) * log_s_neg)
    m = s * (1 - y) + s_neg * y  # 1 - p_t
    m_g = pow_nonnegative(m, gamma)
    dm_g = tl.where(gamma == 0, 0.0, gamma * pow_nonnegative(m, gamma - 1)).to(m.dtype)  # d m**gamma / dm
    alpha_t = tl.where(alpha >= 0, alpha * y + (1 - alpha) * (1 - y), 1.0).to(x.dtype)
    dalpha_t = tl.where(alpha >= 0, 2 * alpha - 1, 0.0).to(x.dtype)  # d alpha_t / dy
    dx = alpha_t * (((1 - y) * s - y * s_neg) * m_g + ce * dm_g * (1 - 2 * y) * s * s_neg)
    # d ce / dy = log sigmoid(-x) - log sigmoid(x) = -x; d m / dy = sigmoid(-x) - sigmoid(x)
    dy = alpha_t * (-x * m_g + ce * dm_g * (s_neg - s)) + dalpha_t * ce * m_g
    return alpha_t * ce * m_g, dx, dy, tl.zeros_like(x)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    return elementwise_loss(bce_with_logits, (input, target, pos_weight), weight, reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean", queued_range_error=None):
    """queued_range_error: where the probability check is the call's (CUDA, torch.compile), its
    message: the kernel records the check as it reads the probabilities and the assert is queued."""
    return elementwise_loss(bce, (input, target), weight, reduction,
                            unit_interval_error=queued_range_error)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    return elementwise_loss(sigmoid_focal, (inputs, targets), None, reduction, alpha, gamma)


KERNELS = {
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "binary_cross_entropy": binary_cross_entropy,
    "sigmoid_focal_loss": sigmoid_focal_loss,
}
