"""Pairwise ranking losses: the margin ranking hinge and RankNet."""
import torch

from .._reduction import reduce


def margin_ranking_loss(input1, input2, target, margin=0.0, reduction="mean"):
    """max(0, -y * (x1 - x2) + margin)."""
    return reduce((-target * (input1 - input2) + margin).clamp(min=0), reduction)


def rank_loss(label, left, right, reduction="mean"):
    """RankNet: log(1 + exp(left - right)) - label * (left - right)."""
    diff = left - right
    # log(1 + e^d) as logaddexp: F.softplus switches to d above 20, 2e-9 off in float64
    return reduce(torch.logaddexp(diff, torch.zeros_like(diff)) - label * diff, reduction)
