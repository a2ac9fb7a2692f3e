"""The dice overlap loss over probabilities and one-hot class labels."""
import torch

from .._reduction import reduce


def dice_loss(input, label, epsilon=1e-5, reduction="mean"):
    """Per sample 1 - 2 |X∩Y| / (|X| + |Y| + epsilon) with Y the one-hot label over the last dim."""
    classes = torch.arange(input.shape[-1], device=input.device)
    one_hot = (label.long() == classes).to(input.dtype)  # label (..., 1) against every class
    sample_dims = tuple(range(1, input.dim()))
    intersection = (input * one_hot).sum(sample_dims)
    denominator = input.sum(sample_dims) + one_hot.sum(sample_dims)
    return reduce(1 - 2 * intersection / (denominator + epsilon), reduction)
