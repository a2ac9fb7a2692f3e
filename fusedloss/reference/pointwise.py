"""Pointwise losses of the difference input - target, with torch 2.13's optional weight.

torch 2.13 is not uniform about the weighted mean: L1 and MSE divide sum(w * loss) by sum(w),
Huber divides it by the element count. The reference follows each.
"""
import torch

from .._reduction import reduce


def _weighted(loss, weight, reduction):
    if weight is None:
        return reduce(loss, reduction)
    return reduce(loss * weight, reduction, weight.sum())


def l1_loss(input, target, reduction="mean", weight=None):
    return _weighted((input - target).abs(), weight, reduction)


def mse_loss(input, target, reduction="mean", weight=None):
    return _weighted((input - target) ** 2, weight, reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """0.5 d**2 / beta inside |d| < beta, |d| - beta / 2 outside; beta = 0 is the L1 loss."""
    diff = input - target  # squared as it is: the square of |d| has no second derivative at 0
    if beta == 0:
        return reduce(diff.abs(), reduction)
    return reduce(torch.where(diff.abs() < beta, 0.5 * diff ** 2 / beta, diff.abs() - 0.5 * beta),
                  reduction)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """0.5 d**2 inside |d| < delta, delta * (|d| - delta / 2) outside."""
    diff = input - target  # squared as it is (smooth_l1_loss says why)
    loss = torch.where(diff.abs() < delta, 0.5 * diff ** 2, delta * (diff.abs() - 0.5 * delta))
    return reduce(loss if weight is None else loss * weight, reduction)
