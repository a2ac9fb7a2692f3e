"""The reduction of a loss: its names, torch's deprecated size_average/reduce mapping onto them,
and `reduce`, the one implementation every layer (reference, kernels, distributed) applies.

Nothing here validates with `assert`: a user's mistake must survive `python -O`.
"""
import warnings

import torch

REDUCTIONS = ("none", "mean", "sum")


def warn(message, stacklevel):
    """warnings.warn(message) at `stacklevel` from the caller, except while torch.compile traces:
    dynamo cannot trace warnings.warn (a graph break), so a compiled call does not repeat
    torch's deprecation warnings (nor _args's broadcasting one)."""
    if not torch.compiler.is_compiling():
        warnings.warn(message, stacklevel=stacklevel + 1)


def reduction_from_legacy(size_average, reduce, reduction):
    """torch's mapping of the deprecated size_average/reduce pair onto a reduction name."""
    if size_average is None and reduce is None:
        return check_reduction(reduction)
    warn("size_average and reduce args will be deprecated, please use reduction='"
         f"{_legacy_name(size_average, reduce)}' instead.", stacklevel=3)
    return _legacy_name(size_average, reduce)


def _legacy_name(size_average, reduce):
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def check_reduction(reduction):
    """The reduction name, with torch's deprecated alias 'elementwise_mean' mapped to 'mean'."""
    if reduction == "elementwise_mean":
        warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' "
             "instead.", stacklevel=3)
        return "mean"
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction; expected one of "
                         f"{', '.join(map(repr, REDUCTIONS))}")
    return reduction


def reduce(loss, reduction, denominator=None):
    """Apply a reduction; 'mean' divides the sum by `denominator` (default: the element count).

    A mean over nothing (zero elements, or every target ignored or weighted 0) is NaN with a zero
    gradient, as torch gives it. Of zero elements it is torch's plain 0/0, so that forward mode
    gives torch's NaN tangent too (there is no gradient to keep at 0).
    """
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if denominator is None:
        # the element count, 0 only for an empty loss (torch's 0/0 there too): one division,
        # by the exact count (a 16-bit tensor of it would round counts past 256)
        return total / loss.numel()
    denominator = torch.as_tensor(denominator, dtype=total.dtype, device=total.device)
    if loss.numel() == 0:
        return total / denominator
    nonzero = denominator != 0
    return torch.where(nonzero, total / torch.where(nonzero, denominator, 1), torch.nan)
