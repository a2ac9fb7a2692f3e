"""The dice overlap loss over probabilities and one-hot class labels."""
import torch.nn.functional as F

from .._reduction import reduce


def dice_loss(input, label, epsilon=1e-5, reduction="mean"):
    """Per sample 1 - 2 |X∩Y| / (|X| + |Y| + epsilon) with Y the one-hot label over the last dim."""
    one_hot = F.one_hot(label.squeeze(-1).long(), input.shape[-1]).to(input.dtype)
    sample_dims = tuple(range(1, input.dim()))
    intersection = (input * one_hot).sum(sample_dims)
    denominator = input.sum(sample_dims) + one_hot.sum(sample_dims)
    return reduce(1 - 2 * intersection / (denominator + epsilon), reduction)
