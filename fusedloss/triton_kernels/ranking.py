"""Pairwise ranking losses on the generic elementwise kernel (_elementwise.py): the margin
ranking hinge and RankNet, each its jit math plus its launcher.
"""
import triton
import triton.language as tl

from ._elementwise import elementwise_loss
from ._math import sigmoids_and_logs


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
    s, _, _, log_s_neg = sigmoids_and_logs(d)
    loss = -log_s_neg - label * d  # softplus(d) = -log sigmoid(-d)
    return loss, -d, s - label, label - s


def margin_ranking_loss(input1, input2, target, margin=0.0, reduction="mean"):
    return elementwise_loss(margin_ranking, (input1, input2, target), None, reduction, margin)


def rank_loss(label, left, right, reduction="mean"):
    return elementwise_loss(rank, (label, left, right), None, reduction)


KERNELS = {"margin_ranking_loss": margin_ranking_loss, "rank_loss": rank_loss}
