"""Binary losses on logits and on probabilities, and torchvision's sigmoid focal loss."""
import torch
import torch.nn.functional as F

from .. import _args
from .._reduction import reduce


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """-w * [pos_weight * y * log sigmoid(x) + (1 - y) * log sigmoid(-x)], broadcast as torch."""
    positive = F.logsigmoid(input) * target
    if pos_weight is not None:
        positive = positive * pos_weight
    loss = -(positive + (1 - target) * F.logsigmoid(-input))
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean", queued_range_error=None):
    """-w * [y * log p + (1 - y) * log(1 - p)], each log clamped at -100 as torch does.
    queued_range_error: where functional.py left the probability check to the call (CUDA,
    torch.compile), its message, queued on the device here."""
    if queued_range_error is not None:
        _args.queue_within(input, 0, 1, queued_range_error)
    loss = -(target * torch.log(input).clamp(min=-100) + (1 - target) * torch.log1p(-input).clamp(min=-100))
    if weight is not None:
        loss = loss * weight
    return reduce(loss, reduction)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision's focal loss: BCE-with-logits scaled by (1 - p_t)**gamma and alpha_t."""
    p = torch.sigmoid(inputs)
    ce = binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return reduce(loss, reduction)
