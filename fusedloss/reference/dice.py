"""The dice overlap loss over probabilities and one-hot class labels."""
import torch

from .. import _args
from .._reduction import reduce


def dice_loss(input, label, epsilon=1e-5, reduction="mean", queued_index_error=None):
    """Per sample 1 - 2 |X∩Y| / (|X| + |Y| + epsilon) with Y the one-hot label over the last dim.
    queued_index_error: where functional.py left the labels' range check to the call (CUDA),
    its message, queued on the device here."""
    if queued_index_error is not None:
        _args.queue_class_indices(label, input.shape[-1], None, queued_index_error)
    classes = torch.arange(input.shape[-1], device=input.device)
    one_hot = (label.long() == classes).to(input.dtype)  # label (..., 1) against every class
    sample_dims = tuple(range(1, input.dim()))
    intersection = (input * one_hot).sum(sample_dims)
    denominator = input.sum(sample_dims) + one_hot.sum(sample_dims)
    return reduce(1 - 2 * intersection / (denominator + epsilon), reduction)
