"""Paddle Fluid's loss names, for code ported from Fluid: thin mappings onto fusedloss.functional
(same kernels, same gradients) keeping Fluid's argument names, defaults and output shapes.

Where Fluid and torch disagree, these follow Fluid; each docstring says where.
"""
import torch

from . import functional as F
from .paddle_sequence import crf_decoding, hsigmoid, linear_chain_crf, nce, warpctc

__all__ = [
    "crf_decoding", "cross_entropy", "dice_loss", "hsigmoid", "linear_chain_crf",
    "margin_rank_loss", "nce", "rank_loss", "sigmoid_cross_entropy_with_logits", "smooth_l1",
    "softmax_with_cross_entropy", "square_error_cost", "warpctc",
]


def square_error_cost(input, label):
    """(input - label)**2 per element, no reduction (Fluid has no reduction argument here)."""
    return F.mse_loss(input, label, reduction="none")


def smooth_l1(x, y, inside_weight=None, outside_weight=None, sigma=1.0):
    """Fluid's smooth L1: with d = inside_weight * (x - y), 0.5 * (sigma * d)**2 where
    |d| < 1 / sigma**2 else |d| - 0.5 / sigma**2, times outside_weight, summed over every
    dimension but the first: shape (N, 1). torch's beta is 1 / sigma**2 and torch reduces over
    all elements instead."""
    if inside_weight is not None:
        x, y = x * inside_weight, y * inside_weight
    loss = F.smooth_l1_loss(x, y, reduction="none", beta=1.0 / sigma ** 2)
    if outside_weight is not None:
        loss = loss * outside_weight
    return loss.reshape(loss.shape[0], -1).sum(1, keepdim=True)


def softmax_with_cross_entropy(logits, label, soft_label=False, ignore_index=-100, axis=-1,
                               return_softmax=False):
    """Cross entropy on logits along `axis` (Fluid: the last by default, torch: dim 1). Hard
    labels carry a size-1 dimension at `axis`; the loss keeps it (shape of logits with 1 at
    `axis`), ignored positions give 0 and nothing is reduced."""
    axis = axis % logits.dim()
    moved = logits.movedim(axis, 1)
    if soft_label:
        target = label.movedim(axis, 1)
    else:
        target = label.squeeze(axis).long()
    loss = F.cross_entropy(moved, target, ignore_index=ignore_index, reduction="none")
    loss = loss.unsqueeze(axis)
    if return_softmax:
        return loss, torch.softmax(logits, dim=axis)
    return loss


def cross_entropy(input, label, soft_label=False, ignore_index=-100):
    """Fluid's cross entropy on probabilities (not logits, unlike torch): -log input[label] per
    row, shape (N, 1), 0 where label == ignore_index; soft labels give -sum(label * log input)."""
    log_probs = torch.log(input)
    if soft_label:
        return -(label * log_probs).sum(-1, keepdim=True)
    loss = F.nll_loss(log_probs.movedim(-1, 1), label.squeeze(-1).long(),
                      ignore_index=ignore_index, reduction="none")
    return loss.unsqueeze(-1)


def sigmoid_cross_entropy_with_logits(x, label, ignore_index=-100, normalize=False):
    """Element-wise BCE on logits; elements whose label equals ignore_index give 0 (torch has no
    ignore_index here), and normalize=True divides by the number of elements not ignored."""
    kept = (label != ignore_index).to(x.dtype)
    loss = F.binary_cross_entropy_with_logits(x, label * kept, weight=kept, reduction="none")
    if normalize:
        loss = loss / kept.sum().clamp(min=1)
    return loss


def rank_loss(label, left, right):
    """RankNet per pair, no reduction: log(1 + exp(left - right)) - label * (left - right)."""
    return F.rank_loss(label, left, right, reduction="none")


def margin_rank_loss(label, left, right, margin=0.1):
    """max(0, -label * (left - right) + margin) per pair, no reduction; Fluid's default margin is
    0.1 where torch's is 0, and the label comes first."""
    return F.margin_ranking_loss(left, right, label, margin=margin, reduction="none")


def dice_loss(input, label, epsilon=1e-5):
    """Mean over the batch of 1 - 2|X∩Y| / (|X| + |Y| + epsilon), label one-hot over the last dim."""
    return F.dice_loss(input, label, epsilon=epsilon)
