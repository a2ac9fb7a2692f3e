"""Public loss functions, drop-in twins of torch.nn.functional (plus the losses torch lacks).

Each function normalises its arguments the way torch does (deprecated size_average/reduce, class
dimension, broadcasting), raises torch's error for bad input before anything runs, and hands the
normalised call to `_dispatch.call`, which picks the Triton kernel or the reference.
"""
import torch

from . import _args
from ._dispatch import call
from .functional_sequence import (crf_decode, crf_marginals, crf_nll, ctc_loss,
                                  ctc_loss_with_logits, hsigmoid_loss, nce_loss)

__all__ = [
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "crf_decode",
    "crf_marginals", "crf_nll", "ctc_loss", "ctc_loss_with_logits", "dice_loss", "hsigmoid_loss",
    "huber_loss", "l1_loss", "linear_cross_entropy", "margin_ranking_loss", "mse_loss",
    "nce_loss", "nll_loss", "rank_loss", "sigmoid_focal_loss", "smooth_l1_loss",
    "softmax_focal_loss",
]


# --- softmax family -------------------------------------------------------------------------

def _check_class_target(input_shape, target, ignore_index):
    """torch's checks of a class-index target against (C,), (N, C) or (N, C, d1, ..., dk) input."""
    if len(input_shape) == 0:
        raise ValueError("input must have at least one dimension (the classes), got a 0-d tensor")
    if len(input_shape) == 1:
        if target.dim() != 0:
            raise RuntimeError(f"for an unbatched input of shape {list(input_shape)} the target "
                               f"must be 0-d, got shape {list(target.shape)}")
        num_classes = input_shape[0]
    else:
        num_classes = input_shape[1]
        if input_shape[0] != (target.shape[0] if target.dim() else 1):
            raise ValueError(f"Expected input batch_size ({input_shape[0]}) to match target "
                             f"batch_size ({target.shape[0] if target.dim() else 1}).")
        expected = input_shape[:1] + input_shape[2:]
        if target.shape != expected:
            if len(input_shape) == 2:
                raise RuntimeError("0D or 1D target tensor expected, multi-target not supported "
                                   f"(target shape {list(target.shape)})")
            raise RuntimeError(f"Expected target size {list(expected)}, got {list(target.shape)}")
    _args.check_class_indices(target, num_classes, ignore_index)
    return num_classes


def _is_soft_target(input, target):
    return target.is_floating_point() and target.shape == input.shape


def _check_logit_options(z_loss, softcap):
    if z_loss < 0:
        raise ValueError(f"z_loss must be non-negative, got {z_loss}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap}")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                  return_lse=False, inplace_backward=False):
    """torch.nn.functional.cross_entropy, plus z-loss, tanh soft-capping and the per-token lse.

    Extras: `z_loss` adds z_loss * lse**2 per non-ignored token (unweighted, sharing the mean's
    denominator); `softcap` replaces logits x by softcap * tanh(x / softcap) first;
    `return_lse=True` returns (loss, lse) with lse per token in float32 (float64 for float64
    input), not differentiable; `inplace_backward=True` lets the kernel keep the gradient in the
    logits' storage (their values are overwritten once the loss is computed).
    """
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_floating("cross_entropy input", input)
    _args.check_label_smoothing(label_smoothing)
    _check_logit_options(z_loss, softcap)
    if _is_soft_target(input, target):
        num_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    else:
        num_classes = _check_class_target(input.shape, target, ignore_index)
    _args.check_class_weight(weight, num_classes)
    return call("cross_entropy", input.device, input, target, weight=weight,
                ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                z_loss=z_loss, softcap=softcap, return_lse=return_lse,
                inplace_backward=inplace_backward)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean"):
    """torch.nn.functional.nll_loss: input holds log-probabilities, classes on dim 1."""
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_floating("nll_loss input", input)
    num_classes = _check_class_target(input.shape, target, ignore_index)
    _args.check_class_weight(weight, num_classes)
    return call("nll_loss", input.device, input, target, weight=weight, ignore_index=ignore_index,
                reduction=reduction)


def softmax_focal_loss(input, target, alpha=None, gamma=2.0, ignore_index=-100, reduction="mean"):
    """Multi-class focal loss on logits: -alpha[t] * (1 - p_t)**gamma * log p_t per token.

    'mean' averages over the non-ignored tokens (not over alpha), as focal loss is usually
    normalised by the number of samples.
    """
    reduction = _args.check_reduction(reduction)
    _args.check_floating("softmax_focal_loss input", input)
    if gamma < 0:
        raise ValueError(f"gamma must be non-negative, got {gamma}")
    num_classes = _check_class_target(input.shape, target, ignore_index)
    _args.check_class_weight(alpha, num_classes, name="alpha")
    return call("softmax_focal_loss", input.device, input, target, alpha=alpha, gamma=gamma,
                ignore_index=ignore_index, reduction=reduction)


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=None, label_smoothing=0.0, options=None,
                         z_loss=0.0, softcap=None, return_lse=False):
    """torch.nn.functional.linear_cross_entropy: cross_entropy(linear(input, W, b), target).

    The (N, C) logits are never held whole by the kernel, so torch's chunking `options` are
    accepted and ignored. Input is (N, in_features) or (in_features,) and linear_weight
    (C, in_features); torch's K-dimensional `out_features` layouts are not supported.
    """
    del options  # chunking hints for torch's own implementation; the kernel always streams
    reduction = _args.check_reduction(reduction)
    ignore_index = -100 if ignore_index is None else ignore_index
    _args.check_floating("linear_cross_entropy input", input)
    _args.check_label_smoothing(label_smoothing)
    _check_logit_options(z_loss, softcap)
    if input.dim() not in (1, 2) or linear_weight.dim() != 2:
        raise ValueError("linear_cross_entropy supports input (N, in_features) or (in_features,) "
                         f"and linear_weight (C, in_features); got input {list(input.shape)} and "
                         f"linear_weight {list(linear_weight.shape)}")
    if input.shape[-1] != linear_weight.shape[1]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied: input has "
                           f"{input.shape[-1]} features, linear_weight expects {linear_weight.shape[1]}")
    num_classes = linear_weight.shape[0]
    if linear_bias is not None and linear_bias.shape != (num_classes,):
        raise RuntimeError(f"linear_bias must have shape ({num_classes},), got {list(linear_bias.shape)}")
    logits_shape = input.shape[:-1] + (num_classes,)
    if not (target.is_floating_point() and target.shape == logits_shape):
        _check_class_target(logits_shape, target, ignore_index)
    _args.check_class_weight(weight, num_classes)
    return call("linear_cross_entropy", input.device, input, linear_weight, target,
                linear_bias=linear_bias, weight=weight, reduction=reduction,
                ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                softcap=softcap, return_lse=return_lse)


# --- binary family --------------------------------------------------------------------------

def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """torch.nn.functional.binary_cross_entropy_with_logits (weight and pos_weight broadcast)."""
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_same_size(input, target, "Target size ({target}) must be the same as input size ({input})")
    if weight is not None:
        torch.broadcast_shapes(weight.shape, input.shape)
    if pos_weight is not None:
        torch.broadcast_shapes(pos_weight.shape, input.shape)
    return call("binary_cross_entropy_with_logits", input.device, input, target, weight=weight,
                reduction=reduction, pos_weight=pos_weight)


def _check_probabilities(input):
    """torch's check that BCE's input holds probabilities (queued on the device for CUDA)."""
    outside = (input < 0) | (input > 1)
    message = "all elements of input should be between 0 and 1"
    if input.device.type == "cuda":
        torch._assert_async(~outside.any(), message)
    elif input.numel() and bool(outside.any()):
        raise RuntimeError(message)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """torch.nn.functional.binary_cross_entropy on probabilities, logs clamped at -100."""
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_same_size(input, target, "Using a target size ({target}) that is different to the "
                          "input size ({input}) is deprecated. Please ensure they have the same size.")
    _check_probabilities(input)
    if weight is not None and weight.shape != input.shape:
        weight = weight.expand(torch.broadcast_shapes(target.shape, weight.shape))
    return call("binary_cross_entropy", input.device, input, target, weight=weight,
                reduction=reduction)


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss: BCE with logits scaled by (1 - p_t)**gamma and alpha_t
    (alpha < 0 disables the alpha weighting)."""
    if reduction not in _args.REDUCTIONS:
        raise ValueError(f"Invalid Value for arg 'reduction': '{reduction}' \n Supported reduction "
                         "modes: 'none', 'mean', 'sum'")
    _args.check_same_size(inputs, targets, "Target size ({target}) must be the same as input size ({input})")
    return call("sigmoid_focal_loss", inputs.device, inputs, targets, alpha=alpha, gamma=gamma,
                reduction=reduction)


# --- regression family ----------------------------------------------------------------------

def _broadcast_pair(input, target):
    _args.warn_if_broadcasting(input, target)
    return torch.broadcast_tensors(input, target)


def _check_elementwise_weight(weight, input):
    if weight is not None and weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """torch.nn.functional.l1_loss; a weight (input's shape) makes 'mean' sum(w*|d|)/sum(w)."""
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    input, target = _broadcast_pair(input, target)
    _check_elementwise_weight(weight, input)
    return call("l1_loss", input.device, input, target, reduction=reduction, weight=weight)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """torch.nn.functional.mse_loss; a weight (input's shape) makes 'mean' sum(w*d²)/sum(w)."""
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    input, target = _broadcast_pair(input, target)
    _check_elementwise_weight(weight, input)
    return call("mse_loss", input.device, input, target, reduction=reduction, weight=weight)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    """torch.nn.functional.smooth_l1_loss; beta = 0 is the L1 loss."""
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    input, target = _broadcast_pair(input, target)
    return call("smooth_l1_loss", input.device, input, target, reduction=reduction, beta=beta)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """torch.nn.functional.huber_loss; with a weight (input's shape) 'mean' is sum(w * loss)
    over the element count, as torch 2.13 computes it (unlike l1_loss and mse_loss)."""
    reduction = _args.check_reduction(reduction)
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    input, target = _broadcast_pair(input, target)
    _check_elementwise_weight(weight, input)
    return call("huber_loss", input.device, input, target, reduction=reduction, delta=delta,
                weight=weight)


# --- ranking and overlap --------------------------------------------------------------------

def margin_ranking_loss(input1, input2, target, margin=0.0, size_average=None, reduce=None,
                        reduction="mean"):
    """torch.nn.functional.margin_ranking_loss: max(0, -y * (x1 - x2) + margin)."""
    reduction = _args.reduction_from_legacy(size_average, reduce, reduction)
    if not input1.dim() == input2.dim() == target.dim():
        raise RuntimeError("margin_ranking_loss : All input tensors should have same dimension but "
                           f"got sizes: input1: {input1.size()}, input2: {input2.size()}, "
                           f"target: {target.size()} ")
    input1, input2, target = torch.broadcast_tensors(input1, input2, target)
    return call("margin_ranking_loss", input1.device, input1, input2, target, margin=margin,
                reduction=reduction)


def rank_loss(label, left, right, reduction="mean"):
    """RankNet pairwise loss log(1 + exp(left - right)) - label * (left - right), broadcast."""
    reduction = _args.check_reduction(reduction)
    label, left, right = torch.broadcast_tensors(label, left, right)
    return call("rank_loss", left.device, label, left, right, reduction=reduction)


def dice_loss(input, label, epsilon=1e-5, reduction="mean"):
    """Dice loss per sample, 1 - 2|X∩Y| / (|X| + |Y| + epsilon), over probabilities (N, ..., C)
    and class indices (N, ..., 1); 'none' gives the (N,) per-sample losses."""
    reduction = _args.check_reduction(reduction)
    if input.dim() < 2 or label.shape != input.shape[:-1] + (1,):
        raise ValueError(f"dice_loss expects input (N, ..., C) and label (N, ..., 1); got input "
                         f"{list(input.shape)} and label {list(label.shape)}")
    _args.check_class_indices(label, input.shape[-1], ignore_index=None)
    return call("dice_loss", input.device, input, label, epsilon=epsilon, reduction=reduction)
