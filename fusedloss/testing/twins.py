"""torch's own implementation of a loss, on whichever torch is installed.

torch.nn.functional.linear_cross_entropy arrived in torch 2.13; on older builds its documented
equivalent, cross_entropy(linear(input, W, b), target), is the twin (the same formula torch's
docstring gives as its reference implementation), so the fuzzer, the tests and the benchmarks
measure against torch on every supported version.
"""
import torch.nn.functional as torch_F


def _linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                          reduction="mean", ignore_index=None, label_smoothing=0.0, options=None):
    """A K-dimensional linear_weight (C, d1, ..., dk, H) gives logits (N, C, d1, ..., dk): the
    projection on its (C * d1 * ... * dk, H) rows, reshaped, as torch 2.13 computes it."""
    del options  # torch's chunking hints; the composition has nothing to chunk
    out_features = linear_weight.shape[1:-1]
    flat_bias = None if linear_bias is None else linear_bias.reshape(-1)
    logits = torch_F.linear(input, linear_weight.reshape(-1, linear_weight.shape[-1]), flat_bias)
    if out_features:
        logits = logits.reshape(*input.shape[:-1], linear_weight.shape[0], *out_features)
    return torch_F.cross_entropy(logits, target, weight=weight, reduction=reduction,
                                 ignore_index=-100 if ignore_index is None else ignore_index,
                                 label_smoothing=label_smoothing)


_COMPOSITIONS = {"linear_cross_entropy": _linear_cross_entropy}


def torch_function(name):
    """torch.nn.functional.<name>, or its composition where this torch lacks it; None when torch
    has no such loss at all."""
    return getattr(torch_F, name, None) or _COMPOSITIONS.get(name)
