"""Linear cross entropy: the projection, then the cross entropy of its logits."""
import torch

from .cross_entropy import cross_entropy


def linear_cross_entropy(input, linear_weight, target, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, return_lse=False):
    """The projection input @ linear_weight.T (+ bias), then cross_entropy on those logits."""
    logits = torch.nn.functional.linear(input, linear_weight, linear_bias)
    return cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                         softcap=softcap, return_lse=return_lse)
