"""Pairwise ranking losses and the dice overlap loss."""
import torch
import torch.nn.functional as F

from .._args import reduce


def margin_ranking_loss(input1, input2, target, margin=0.0, reduction="mean"):
    """max(0, -y * (x1 - x2) + margin)."""
    return reduce((-target * (input1 - input2) + margin).clamp(min=0), reduction)


def rank_loss(label, left, right, reduction="mean"):
    """RankNet: log(1 + exp(left - right)) - label * (left - right)."""
    diff = left - right
    # log(1 + e^d) as logaddexp: F.softplus switches to d above 20, 2e-9 off in float64
    return reduce(torch.logaddexp(diff, torch.zeros_like(diff)) - label * diff, reduction)


def dice_loss(input, label, epsilon=1e-5, reduction="mean"):
    """Per sample 1 - 2 |X∩Y| / (|X| + |Y| + epsilon) with Y the one-hot label over the last dim."""
    one_hot = F.one_hot(label.squeeze(-1).long(), input.shape[-1]).to(input.dtype)
    sample_dims = tuple(range(1, input.dim()))
    intersection = (input * one_hot).sum(sample_dims)
    denominator = input.sum(sample_dims) + one_hot.sum(sample_dims)
    return reduce(1 - 2 * intersection / (denominator + epsilon), reduction)
