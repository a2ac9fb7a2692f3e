"""Public loss functions, drop-in twins of torch.nn.functional (plus the losses torch lacks).

Each function normalises its arguments the way torch does (deprecated size_average/reduce, class
dimension, broadcasting; lengths to int64 tensors, labels to int64), raises torch's error for bad
input before anything runs (pytorch-crf's for the CRF), and hands the normalised call to
`_dispatch.call`, which runs the Triton kernel or the reference of the same name. The sections
are the loss families of fusedloss.catalog.
"""
import torch

from . import _args, _reduction
from ._autocast import loss_dtype
from ._dispatch import call

__all__ = [
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "crf_decode",
    "crf_marginals", "crf_nll", "ctc_loss", "ctc_loss_with_logits", "dice_loss", "hsigmoid_loss",
    "huber_loss", "l1_loss", "linear_cross_entropy", "margin_ranking_loss", "mse_loss",
    "nce_loss", "nll_loss", "rank_loss", "sigmoid_focal_loss", "smooth_l1_loss",
    "softmax_focal_loss",
]


# --- cross_entropy --------------------------------------------------------------------------

def _check_class_target(input_shape, target, ignore_index, kernel_records=False):
    """torch's checks of a class-index target against (C,), (N, C) or (N, C, d1, ..., dk) input;
    returns the number of classes and, where the range check is the call's to record
    (_args.check_class_indices' kernel_records), its message, else None."""
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
    return num_classes, _args.check_class_indices(target, num_classes, ignore_index,
                                                  kernel_records)


def _is_soft_target(input, target):
    return target.is_floating_point() and target.shape == input.shape


def _check_logit_options(z_loss, softcap):
    if z_loss < 0:
        raise ValueError(f"z_loss must be non-negative, got {z_loss}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap}")


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100,
                  reduce: bool | None = None, reduction: str = "mean", label_smoothing: float = 0.0,
                  *, z_loss: float = 0.0, softcap: float | None = None, return_lse: bool = False,
                  inplace_backward: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.functional.cross_entropy, plus z-loss, tanh soft-capping and the per-token lse.

    Extras: `z_loss` adds z_loss * lse**2 per non-ignored token (unweighted, sharing the mean's
    denominator); `softcap` replaces logits x by softcap * tanh(x / softcap) first;
    `return_lse=True` returns (loss, lse) with lse per token in float32 (float64 for float64
    input), not differentiable; `inplace_backward=True` lets the kernel keep the gradient in the
    logits' storage (their values are overwritten once the loss is computed): a backward through
    any other use of the logits, recorded before the loss or after it, raises torch's "modified
    by an inplace operation" error, and the logits must not be read after the loss (a metric
    under no_grad would read the gradient).
    """
    _args.check_same_device(input, target, weight)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_floating("log_softmax", input)
    _args.check_label_smoothing(label_smoothing)
    _check_logit_options(z_loss, softcap)
    queued_index_error = None
    if _is_soft_target(input, target):
        num_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
        _args.check_class_weight(weight, num_classes, dtype=None)
        # probabilities: torch's expression promotes logits, target and weight together
        input, target, weight = _args.promote(_args.result_dtype(input, target, weight), input,
                                              target, weight)
    else:
        # off the host the row kernel records the range check as it reads the targets
        num_classes, queued_index_error = _check_class_target(input.shape, target, ignore_index,
                                                              kernel_records=True)
        _args.check_class_weight(weight, num_classes, input.dtype)
        _args.check_weight_not_differentiated(weight)
    return call("cross_entropy", input.device, input, target, weight=weight,
                ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                z_loss=z_loss, softcap=softcap, return_lse=return_lse,
                inplace_backward=inplace_backward, queued_index_error=queued_index_error)


def nll_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
             size_average: bool | None = None, ignore_index: int = -100, reduce: bool | None = None,
             reduction: str = "mean") -> torch.Tensor:
    """torch.nn.functional.nll_loss: input holds log-probabilities, classes on dim 1."""
    _args.check_same_device(input, target, weight)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_floating("nll_loss", input)
    # off the host the gather kernel records the range check as it reads the targets
    num_classes, queued_index_error = _check_class_target(input.shape, target, ignore_index,
                                                          kernel_records=True)
    _args.check_class_weight(weight, num_classes, input.dtype)
    _args.check_weight_not_differentiated(weight)
    return call("nll_loss", input.device, input, target, weight=weight, ignore_index=ignore_index,
                reduction=reduction, queued_index_error=queued_index_error)


def softmax_focal_loss(input: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor | None = None,
                       gamma: float = 2.0, ignore_index: int = -100,
                       reduction: str = "mean") -> torch.Tensor:
    """Multi-class focal loss on logits: -alpha[t] * (1 - p_t)**gamma * log p_t per token.

    'mean' averages over the non-ignored tokens (not over alpha), as focal loss is usually
    normalised by the number of samples.
    """
    _args.check_same_device(input, target, alpha)
    reduction = _reduction.check_reduction(reduction)
    _args.check_floating("log_softmax", input)
    if gamma < 0:
        raise ValueError(f"gamma must be non-negative, got {gamma}")
    num_classes, queued_index_error = _check_class_target(input.shape, target, ignore_index,
                                                          kernel_records=True)
    _args.check_class_weight(alpha, num_classes, input.dtype, name="alpha")
    return call("softmax_focal_loss", input.device, input, target, alpha=alpha, gamma=gamma,
                ignore_index=ignore_index, reduction=reduction,
                queued_index_error=queued_index_error)


# --- linear_cross_entropy -------------------------------------------------------------------

def linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                         linear_bias: torch.Tensor | None = None,
                         weight: torch.Tensor | None = None, reduction: str = "mean",
                         ignore_index: int | None = None, label_smoothing: float = 0.0,
                         options: object = None, z_loss: float = 0.0, softcap: float | None = None,
                         return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.functional.linear_cross_entropy: cross_entropy(linear(input, W, b), target).

    The (N, C) logits are never held whole by the kernel, so torch's chunking `options` are
    accepted and ignored. Input is (N, in_features) or (in_features,), linear_weight
    (C, in_features), or torch 2.13's K-dimensional classifier (C, d1, ..., dk, in_features)
    with batched input: class c at position p is scored by row linear_weight[c, p], target
    (N, d1, ..., dk) class indices or (N, C, d1, ..., dk) probabilities.
    """
    del options  # chunking hints for torch's own implementation; the kernel always streams
    _args.check_same_device(input, linear_weight, target, linear_bias, weight)
    reduction = _reduction.check_reduction(reduction)
    _args.check_label_smoothing(label_smoothing)
    _check_logit_options(z_loss, softcap)
    logits_shape = _linear_logits_shape(input, linear_weight, linear_bias)
    soft = target.shape == logits_shape  # torch's own test for probabilities
    if soft and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    _args.check_floating("log_softmax", input)
    for name, tensor in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise RuntimeError(f"expected input and {name} to have the same dtype, but got: "
                               f"{_args.type_name(input.dtype)} != {_args.type_name(tensor.dtype)}")
    num_classes = linear_weight.shape[0]
    if soft and target.is_floating_point():
        _args.check_class_weight(weight, num_classes, dtype=None)
        # probabilities: torch's cross entropy promotes logits, target and weight together
        dtype = _args.result_dtype(input, target, weight)
        input, linear_weight, linear_bias, target, weight = _args.promote(
            dtype, input, linear_weight, linear_bias, target, weight)
    else:
        _check_class_target(logits_shape, target, ignore_index)
        _args.check_class_weight(weight, num_classes, input.dtype)
        _args.check_weight_not_differentiated(weight)
    loss_options = dict(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                        z_loss=z_loss, softcap=softcap, return_lse=return_lse)
    if linear_weight.dim() > 2:
        return _positionwise_linear_cross_entropy(input, linear_weight, linear_bias, target,
                                                  reduction, loss_options)
    return call("linear_cross_entropy", input.device, input, linear_weight, target,
                linear_bias=linear_bias, reduction=reduction, **loss_options)


def _linear_logits_shape(input, linear_weight, linear_bias):
    """torch 2.13's shape checks of linear_cross_entropy; the shape its logits would have."""
    if input.dim() not in (1, 2):
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError("expected linear_weight with dimensionality at least 2, got "
                           f"{linear_weight.dim()}")
    if input.shape[-1] != linear_weight.shape[-1]:
        raise RuntimeError("expected equal input and linear_weight last dimensions "
                           f"(in_features), got {input.shape[-1]} and {linear_weight.shape[-1]}")
    num_classes, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise RuntimeError(f"expected linear_bias shape {(num_classes, *out_features)}, got "
                           f"{tuple(linear_bias.shape)}")
    if out_features and input.dim() == 1:
        raise RuntimeError(f"a K-dimensional linear_weight {tuple(linear_weight.shape)} needs a "
                           f"batched input (N, {input.shape[-1]}), got {tuple(input.shape)}")
    return torch.Size((*input.shape[:-1], num_classes, *out_features))


def _positionwise_linear_cross_entropy(input, linear_weight, linear_bias, target, reduction,
                                       options):
    """A K-dimensional classifier (C, d1, ..., dk, H) is one (C, H) classifier per position p of
    d1 x ... x dk, all reading the same input rows: each position runs the kernel's linear cross
    entropy on its own (C, H) slice (no (N, C, P) logits either), and the positions' sums are
    reduced together, the mean over every kept token of every position as torch's."""
    num_classes, features = linear_weight.shape[0], linear_weight.shape[-1]
    out_features = linear_weight.shape[1:-1]
    positions = out_features.numel()
    weights = linear_weight.reshape(num_classes, positions, features)
    biases = None if linear_bias is None else linear_bias.reshape(num_classes, positions)
    soft = target.is_floating_point()
    targets = target.reshape(*target.shape[:2 if soft else 1], positions)
    parts = [call("linear_cross_entropy", input.device, input, weights[:, p], targets[..., p],
                  linear_bias=None if biases is None else biases[:, p],
                  reduction="none" if reduction == "none" else "sum", **options)
             for p in range(positions)]
    lse = None
    if options["return_lse"]:
        parts, lse = zip(*parts)
        lse = torch.stack(lse, -1).reshape(input.shape[0], *out_features)
    if reduction == "none":
        loss = torch.stack(parts, -1).reshape(input.shape[0], *out_features)
    else:
        sums = torch.stack(parts).to(torch.float64 if input.dtype == torch.float64 else torch.float32)
        denominator = None
        if reduction == "mean":
            denominator = (targets[:, 0].numel() if soft
                           else _kept_weight(targets, options["weight"], options["ignore_index"]))
        loss = _reduction.reduce(sums, reduction, denominator).to(loss_dtype(input.dtype, input.device))
    return loss if lse is None else (loss, lse)


def _kept_weight(target, weight, ignore_index):
    """The 'mean' denominator of class-index targets: the summed class weights of the kept ones."""
    kept = target != ignore_index
    if weight is None:
        return kept.sum()
    return (weight[torch.where(kept, target, 0)] * kept).sum()


# --- binary ---------------------------------------------------------------------------------

def _logistic_dtypes(input, target, *weights):
    """torch's dtype handling of a loss on logits: floating logits; a floating (or complex)
    target, which sets the output dtype (torch computes the loss into a copy of 1 - target).
    Returns the real operands promoted to their common dtype; complex ones are left for the
    reference."""
    _args.check_computable("log_sigmoid", input.dtype)
    _args.check_subtractable(target)
    _args.check_castable(_args.result_dtype(input, target), target.dtype)
    dtype = _args.result_dtype(input, target, *weights)
    return (input, target, *weights) if dtype.is_complex else _args.promote(dtype, input, target, *weights)


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor,
                                     weight: torch.Tensor | None = None,
                                     size_average: bool | None = None, reduce: bool | None = None,
                                     reduction: str = "mean",
                                     pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.binary_cross_entropy_with_logits (weight and pos_weight broadcast)."""
    _args.check_same_device(input, target, weight, pos_weight)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_same_size(input, target, "Target size ({target}) must be the same as input size ({input})")
    if weight is not None:
        torch.broadcast_shapes(weight.shape, input.shape)
    if pos_weight is not None:
        torch.broadcast_shapes(pos_weight.shape, input.shape)
    out_dtype = loss_dtype(target.dtype, input.device)  # float32 under autocast, as torch
    input, target, weight, pos_weight = _logistic_dtypes(input, target, weight, pos_weight)
    return call("binary_cross_entropy_with_logits", input.device, input, target, weight=weight,
                reduction=reduction, pos_weight=pos_weight).to(out_dtype)


def binary_cross_entropy(input: torch.Tensor, target: torch.Tensor,
                         weight: torch.Tensor | None = None, size_average: bool | None = None,
                         reduce: bool | None = None, reduction: str = "mean") -> torch.Tensor:
    """torch.nn.functional.binary_cross_entropy on probabilities, logs clamped at -100."""
    _args.check_same_device(input, target, weight)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_same_size(input, target, "Using a target size ({target}) that is different to the "
                          "input size ({input}) is deprecated. Please ensure they have the same size.")
    _args.check_same_dtype("target", target, input.dtype)
    _args.check_computable("binary_cross_entropy", input.dtype)
    range_error = "all elements of input should be between 0 and 1"
    # on the host: torch's error before anything runs. Elsewhere the check is the call's to
    # queue: the kernel records it while it reads the probabilities (no pass of its own)
    queued = not _args.checks_on_host(input.device)
    if not queued:
        _args.check_within(input, 0, 1, RuntimeError, range_error)
    if weight is not None and weight.shape != input.shape:
        weight = weight.expand(torch.broadcast_shapes(target.shape, weight.shape))
    (weight,) = _args.promote(input.dtype, weight)  # torch scales by the weight in the input's dtype
    return call("binary_cross_entropy", input.device, input, target, weight=weight,
                reduction=reduction, queued_range_error=range_error if queued else None)


def _check_focal_alpha(alpha):
    if not (0 <= alpha <= 1 or alpha == -1):
        raise ValueError(f"Invalid alpha value: {alpha}. alpha must be in [0, 1], or -1 to "
                         "disable the alpha weighting.")


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none") -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss: BCE with logits scaled by (1 - p_t)**gamma and alpha_t
    (alpha = -1 disables the alpha weighting; torchvision refuses other values outside [0, 1])."""
    _args.check_same_device(inputs, targets)
    _check_focal_alpha(alpha)
    if reduction not in _reduction.REDUCTIONS:
        raise ValueError(f"Invalid Value for arg 'reduction': '{reduction}' \n Supported reduction "
                         "modes: 'none', 'mean', 'sum'")
    _args.check_same_size(inputs, targets, "Target size ({target}) must be the same as input size ({input})")
    inputs, targets = _logistic_dtypes(inputs, targets)
    return call("sigmoid_focal_loss", inputs.device, inputs, targets, alpha=alpha, gamma=gamma,
                reduction=reduction)


# --- pointwise ------------------------------------------------------------------------------

def _broadcast_pair(input, target):
    _args.warn_if_broadcasting(input, target)
    return torch.broadcast_tensors(input, target)


def _check_elementwise_weight(weight, input):
    if weight is not None and weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")


def _floating_pair(op, input, target, weight):
    """mse and smooth L1: torch's kernels compute in the common dtype, floating only."""
    dtype = _args.result_dtype(input, target, weight)
    _args.check_computable(op, dtype)
    return _args.promote(dtype, input, target, weight)


def l1_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None,
            reduce: bool | None = None, reduction: str = "mean",
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.l1_loss; a weight (input's shape) makes 'mean' sum(w*|d|)/sum(w).
    Integer inputs give integer 'none' and 'sum' losses and complex ones the modulus, as torch."""
    _args.check_same_device(input, target, weight)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    _args.check_subtractable(input, target)
    dtype = _args.result_dtype(input, target, weight)
    if reduction == "mean" and weight is None and not (dtype.is_floating_point or dtype.is_complex):
        raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either a "
                           f"floating point or complex dtype. Got: {_args.type_name(dtype)}")
    input, target, weight = _args.promote(dtype, input, target, weight)
    input, target = _broadcast_pair(input, target)
    _check_elementwise_weight(weight, input)
    return call("l1_loss", input.device, input, target, reduction=reduction, weight=weight)


def mse_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None,
             reduce: bool | None = None, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.mse_loss; a weight (input's shape) makes 'mean' sum(w*d²)/sum(w)."""
    _args.check_same_device(input, target, weight)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    input, target, weight = _floating_pair("mse_loss", input, target, weight)
    input, target = _broadcast_pair(input, target)
    _check_elementwise_weight(weight, input)
    return call("mse_loss", input.device, input, target, reduction=reduction, weight=weight)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None,
                   reduce: bool | None = None, reduction: str = "mean",
                   beta: float = 1.0) -> torch.Tensor:
    """torch.nn.functional.smooth_l1_loss; beta = 0 is the L1 loss."""
    _args.check_same_device(input, target)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    input, target, _ = _floating_pair("smooth_l1_loss", input, target, None)
    input, target = _broadcast_pair(input, target)
    return call("smooth_l1_loss", input.device, input, target, reduction=reduction, beta=beta)


def huber_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
               delta: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.huber_loss; with a weight (input's shape) 'mean' is sum(w * loss)
    over the element count, as torch 2.13 computes it (unlike l1_loss and mse_loss). As torch,
    the loss has the input's dtype (a weight's dtype promotes it)."""
    _args.check_same_device(input, target, weight)
    reduction = _reduction.check_reduction(reduction)
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    _args.check_castable(_args.result_dtype(input, target), input.dtype)
    _args.check_computable("huber_loss", input.dtype)
    out_dtype = loss_dtype(_args.result_dtype(input, weight), input.device)
    input, target, weight = _args.promote(_args.result_dtype(input, target, weight), input,
                                          target, weight)
    input, target = _broadcast_pair(input, target)
    _check_elementwise_weight(weight, input)
    return call("huber_loss", input.device, input, target, reduction=reduction, delta=delta,
                weight=weight).to(out_dtype)


# --- ranking --------------------------------------------------------------------------------

def margin_ranking_loss(input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor,
                        margin: float = 0.0, size_average: bool | None = None,
                        reduce: bool | None = None, reduction: str = "mean") -> torch.Tensor:
    """torch.nn.functional.margin_ranking_loss: max(0, -y * (x1 - x2) + margin), computed in
    the operands' common dtype with the float margin (integer operands give float32, as torch)."""
    _args.check_same_device(input1, input2, target)
    reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)
    if not input1.dim() == input2.dim() == target.dim():
        raise RuntimeError("margin_ranking_loss : All input tensors should have same dimension but "
                           f"got sizes: input1: {input1.size()}, input2: {input2.size()}, "
                           f"target: {target.size()} ")
    _args.check_subtractable(input1, input2)
    if target.dtype == torch.bool:
        raise RuntimeError("Negation, the `-` operator, on a bool tensor is not supported. If you "
                           "are trying to invert a mask, use the `~` or `logical_not()` operator "
                           "instead.")
    dtype = _args.result_dtype(input1, input2, target, number=float(margin))
    if dtype.is_complex:
        raise NotImplementedError("clamp is not supported for complex types")
    input1, input2, target = torch.broadcast_tensors(*_args.promote(dtype, input1, input2, target))
    return call("margin_ranking_loss", input1.device, input1, input2, target, margin=margin,
                reduction=reduction)


def rank_loss(label: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
              reduction: str = "mean") -> torch.Tensor:
    """RankNet pairwise loss log(1 + exp(left - right)) - label * (left - right), broadcast, in
    the operands' common floating dtype (integer operands give the default float dtype)."""
    _args.check_same_device(label, left, right)
    reduction = _reduction.check_reduction(reduction)
    _args.check_subtractable(left, right)
    dtype = _args.result_dtype(label, left, right, number=0.0)
    _args.check_computable("rank_loss", dtype)
    label, left, right = torch.broadcast_tensors(*_args.promote(dtype, label, left, right))
    return call("rank_loss", left.device, label, left, right, reduction=reduction)


# --- dice -----------------------------------------------------------------------------------

def dice_loss(input: torch.Tensor, label: torch.Tensor, epsilon: float = 1e-5,
              reduction: str = "mean") -> torch.Tensor:
    """Dice loss per sample, 1 - 2|X∩Y| / (|X| + |Y| + epsilon), over probabilities (N, ..., C)
    and class indices (N, ..., 1); 'none' gives the (N,) per-sample losses."""
    _args.check_same_device(input, label)
    reduction = _reduction.check_reduction(reduction)
    if input.dim() < 2 or label.shape != input.shape[:-1] + (1,):
        raise ValueError(f"dice_loss expects input (N, ..., C) and label (N, ..., 1); got input "
                         f"{list(input.shape)} and label {list(label.shape)}")
    # off the host the sums kernel records the range check as it reads the labels
    queued_index_error = _args.check_class_indices(label, input.shape[-1], ignore_index=None,
                                                   kernel_records=True)
    return call("dice_loss", input.device, input, label, epsilon=epsilon, reduction=reduction,
                queued_index_error=queued_index_error)


# --- ctc ------------------------------------------------------------------------------------

def _ctc_lengths(name, lengths, batch, device):
    """Lengths given as an integer tensor (0-d or 1-d) or a list/tuple of ints -> int64 (N,)."""
    if isinstance(lengths, torch.Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dim() > 1:
            raise TypeError(f"ctc_loss(): {name} must be an integer tensor of at most one "
                            f"dimension or a list/tuple of ints, got a {lengths.dtype} tensor of "
                            f"shape {list(lengths.shape)}")
        lengths = lengths.to(device=device, dtype=torch.int64).reshape(-1)
    elif isinstance(lengths, (list, tuple)) and all(isinstance(v, int) for v in lengths):
        lengths = torch.tensor(lengths, dtype=torch.int64, device=device)
    else:
        raise TypeError(f"ctc_loss(): {name} must be a tensor or a list/tuple of ints, "
                        f"got {type(lengths).__name__}")
    if lengths.numel() != batch:
        raise RuntimeError(f"{name} must be of size batch_size")
    return lengths


def _ctc_rows(targets, target_lengths, width):
    """Concatenated 1-D targets as (N, width) padded rows (0 past each length)."""
    positions = torch.arange(width, device=targets.device)
    starts = torch.cumsum(target_lengths, 0) - target_lengths
    inside = positions < target_lengths.unsqueeze(1)
    index = (starts.unsqueeze(1) + positions).clamp(max=max(targets.numel() - 1, 0))
    return torch.where(inside, targets[index], 0)


def _check_ctc(log_probs, targets, input_lengths, target_lengths, blank, reduction):
    """torch.nn.functional.ctc_loss's checks and normalisation; returns int64 targets and
    lengths, and the label check's message where the call records it (_check_ctc_labels)."""
    reduction = _reduction.check_reduction(reduction)
    if log_probs.dim() not in (2, 3):
        raise RuntimeError("Expected log_probs to be a 3-dimensional (T, N, C) or 2-dimensional "
                           f"(T, C) tensor, but got a {log_probs.dim()}-dimensional tensor")
    if not log_probs.is_floating_point():
        raise NotImplementedError(f'"ctc_loss" not implemented for {log_probs.dtype}')
    if log_probs.numel() == 0:
        raise RuntimeError("log_probs tensor must not be empty")
    num_frames, num_classes = log_probs.shape[0], log_probs.shape[-1]
    unbatched = log_probs.dim() == 2
    batch = 1 if unbatched else log_probs.shape[1]
    if not 0 <= blank < num_classes:
        raise RuntimeError("blank must be in label range")
    input_lengths = _ctc_lengths("input_lengths", input_lengths, batch, log_probs.device)
    target_lengths = _ctc_lengths("target_lengths", target_lengths, batch, log_probs.device)
    if targets.is_complex() or not 1 <= targets.dim() <= 2:
        raise RuntimeError("Expected targets to be a real tensor of 1 to 2 dimensions, but got a "
                           f"{targets.dim()}-dimensional {targets.dtype} tensor")
    targets = targets.long()
    if torch.compiler.is_compiling() or _args.transformed(input_lengths, target_lengths):
        return _ctc_checked_in_graph(targets, input_lengths, target_lengths, num_frames,
                                     num_classes, blank, unbatched, batch)

    # the lengths are read on the host once, as torch's CTC reads them; every other check is
    # Python on that copy or queued on the device
    input_list, target_list = torch.stack([input_lengths, target_lengths]).tolist()
    for name, values in (("input_lengths", input_list), ("target_lengths", target_list)):
        if values and min(values) < 0:
            raise RuntimeError(f"Expected {name} to have value at least 0, but got value "
                               f"{min(values)}")
    if input_list and max(input_list) > num_frames:
        raise RuntimeError(f"Expected input_lengths to have value at most {num_frames}, but got "
                           f"value {max(input_list)}")
    if unbatched and targets.dim() == 1 and targets.numel() != target_list[0]:
        # torch reads an unbatched 1-D target as exactly its labels, with no padding
        raise RuntimeError(f"Expected tensor to have size {target_list[0]} at dimension 0, "
                           f"but got size {targets.numel()} for argument #2 'targets'")
    longest = max(target_list, default=0)
    if unbatched or targets.dim() == 2:
        rows = targets.reshape(1, -1) if unbatched and targets.dim() == 1 else targets
        if rows.shape[0] != batch:
            raise RuntimeError(f"Expected targets to have size {batch} at dimension 0, but got "
                               f"size {rows.shape[0]}")
        if longest > rows.shape[1]:
            raise RuntimeError(f"Expected targets to have size at least {longest} "
                               f"at dimension 1, but got size {rows.shape[1]}")
    else:
        if targets.numel() != sum(target_list):
            raise RuntimeError(f"Expected concatenated targets to have size {sum(target_list)} "
                               f"(the sum of target_lengths), but got size {targets.numel()}")
        # both backends take padded rows; their width is the longest target, known on the host
        targets = rows = _ctc_rows(targets, target_lengths.to(targets.device), longest)
    # off the host the kernels' first launch records the label check as it reads the labels
    queued_label_error = _check_ctc_labels(rows, target_lengths, blank, num_classes,
                                           kernel_records=True)
    return targets, input_lengths, target_lengths, queued_label_error


def _check_ctc_labels(rows, target_lengths, blank, num_classes, kernel_records=False):
    """Every label inside its target's length in [0, C): torch reads out-of-range labels
    unchecked (garbage or a crash); refuse them instead. With kernel_records, where the check
    is not the host's, nothing is queued here and its message is returned for the call (the
    kernels record it, the reference queues it), else None."""
    message = f"ctc_loss(): target label out of range [0, {num_classes})"
    if kernel_records and _args.kernel_records_check(rows):
        return message
    _args.check_in_range(_args.ctc_labels_in_use(rows, target_lengths, blank), 0, num_classes,
                         IndexError, message)
    return None


def _ctc_checked_in_graph(targets, input_lengths, target_lengths, num_frames, num_classes, blank,
                          unbatched, batch):
    """_check_ctc's length checks while torch.compile traces, where no length can be read on the
    host: each is queued in the graph (_args.check_in_range), and concatenated targets become
    rows as wide as all of them together (the longest target is a value, not a shape). Lengths
    that torch.func.vmap maps over take this path too: each example has its own lengths, which
    these checks read per example, where one host list of them would mix the examples."""
    _args.check_in_range(input_lengths, 0, num_frames + 1, RuntimeError,
                         f"Expected input_lengths to have values in [0, {num_frames}]")
    if unbatched and targets.dim() == 1:  # exactly the labels, as torch reads it
        low, high, rows = targets.numel(), targets.numel() + 1, targets.reshape(1, -1)
    elif targets.dim() == 2:
        rows = targets
        if rows.shape[0] != batch:
            raise RuntimeError(f"Expected targets to have size {batch} at dimension 0, but got "
                               f"size {rows.shape[0]}")
        low, high = 0, rows.shape[1] + 1
    else:
        _args.check_in_range(target_lengths.sum().reshape(1), targets.numel(),
                             targets.numel() + 1, RuntimeError,
                             "Expected concatenated targets to have the size of the sum of "
                             f"target_lengths, {targets.numel()}")
        low, high = 0, targets.numel() + 1
        targets = rows = _ctc_rows(targets, target_lengths.to(targets.device), targets.numel())
    _args.check_in_range(target_lengths, low, high, RuntimeError,
                         f"Expected target_lengths to have values in [{low}, {high - 1}]")
    _check_ctc_labels(rows, target_lengths, blank, num_classes)
    return targets, input_lengths, target_lengths, None


def ctc_loss(log_probs: torch.Tensor, targets: torch.Tensor,
             input_lengths: torch.Tensor | list[int] | tuple[int, ...],
             target_lengths: torch.Tensor | list[int] | tuple[int, ...], blank: int = 0,
             reduction: str = "mean", zero_infinity: bool = False) -> torch.Tensor:
    """torch.nn.functional.ctc_loss: log_probs (T, N, C) or unbatched (T, C); targets padded
    (N, S) or concatenated 1-D; lengths as tensors or lists. Labels outside [0, C) inside a
    target's length raise IndexError (torch does not check them)."""
    targets, input_lengths, target_lengths, queued_label_error = _check_ctc(
        log_probs, targets, input_lengths, target_lengths, blank, reduction)
    return call("ctc_loss", log_probs.device, log_probs, targets, input_lengths, target_lengths,
                blank=blank, reduction=reduction, zero_infinity=zero_infinity,
                queued_label_error=queued_label_error)


def ctc_loss_with_logits(logits: torch.Tensor, targets: torch.Tensor,
                         input_lengths: torch.Tensor | list[int] | tuple[int, ...],
                         target_lengths: torch.Tensor | list[int] | tuple[int, ...], blank: int = 0,
                         reduction: str = "mean", zero_infinity: bool = False) -> torch.Tensor:
    """ctc_loss on log_softmax(logits, -1) with the softmax fused in; the gradient is w.r.t. the
    logits. Same arguments and checks as ctc_loss."""
    targets, input_lengths, target_lengths, queued_label_error = _check_ctc(
        logits, targets, input_lengths, target_lengths, blank, reduction)
    return call("ctc_loss_with_logits", logits.device, logits, targets, input_lengths,
                target_lengths, blank=blank, reduction=reduction, zero_infinity=zero_infinity,
                queued_label_error=queued_label_error)


# --- crf ------------------------------------------------------------------------------------

def _check_crf(emissions, transitions, start_transitions, end_transitions, tags=None, mask=None):
    """pytorch-crf's checks (ValueError) on batch-first inputs; returns tags as int64 tag indices
    (in [-K, K) wherever the gold score reads them, negative ones counting from the end, as
    pytorch-crf's indexing wraps them), mask as bool, and the queued checks' messages where the
    kernels record them (off the host: the mask's first step, the tags' range), as keyword
    arguments for the call."""
    _args.check_same_device(emissions, transitions, start_transitions, end_transitions, tags, mask)
    if emissions.dim() != 3:
        raise ValueError(f"emissions must have dimension of 3, got {emissions.dim()}")
    if emissions.shape[1] == 0:
        raise ValueError("emissions must have at least one time step")
    num_tags = emissions.shape[2]
    if transitions.shape != (num_tags, num_tags):
        raise ValueError(f"transitions must have shape ({num_tags}, {num_tags}) to match the last "
                         f"dimension of emissions, got {tuple(transitions.shape)}")
    for name, vector in (("start_transitions", start_transitions), ("end_transitions", end_transitions)):
        if vector.shape != (num_tags,):
            raise ValueError(f"{name} must have shape ({num_tags},), got {tuple(vector.shape)}")
    if tags is not None:
        if emissions.shape[:2] != tags.shape:
            raise ValueError("the first two dimensions of emissions and tags must match, "
                             f"got {tuple(emissions.shape[:2])} and {tuple(tags.shape)}")
        if tags.is_floating_point() or tags.is_complex():
            raise ValueError(f"tags must be an integer tensor, got {tags.dtype}")
        tags = tags.long()
    # off the host the kernels' first launch records both value checks as it reads the mask
    # and the tags (the reference queues them)
    recorded = emissions.shape[0] > 0 and not _args.checks_on_host(emissions.device)
    queued = {}
    if mask is not None:
        if emissions.shape[:2] != mask.shape:
            raise ValueError("the first two dimensions of emissions and mask must match, "
                             f"got {tuple(emissions.shape[:2])} and {tuple(mask.shape)}")
        mask = mask.bool()
        if recorded:
            queued["queued_mask_error"] = _args.CRF_MASK_ERROR
        else:
            _args.check_in_range(mask[:, 0].to(torch.int8), 1, 2, ValueError,
                                 _args.CRF_MASK_ERROR)
    if tags is not None:
        message = _args.crf_tag_error(num_tags)
        if recorded:
            queued["queued_tag_error"] = message
        else:
            _args.check_in_range(_args.crf_tags_read(tags, mask), -num_tags, num_tags,
                                 IndexError, message)
    return tags, mask, queued


def crf_nll(emissions: torch.Tensor, tags: torch.Tensor, transitions: torch.Tensor,
            start_transitions: torch.Tensor, end_transitions: torch.Tensor,
            mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Linear-chain CRF negative log-likelihood log Z - score(tags) per sequence.

    emissions (B, T, K) batch-first, tags (B, T), transitions[i, j] scores tag i -> tag j, mask
    (B, T) with the first step on (None: all on), applied step by step as pytorch-crf applies
    it. Reductions 'none' (B,), 'sum' and 'mean' (over the batch); pytorch-crf's 'token_mean'
    lives in fusedloss.nn.CRF only.
    """
    reduction = _reduction.check_reduction(reduction)
    tags, mask, queued = _check_crf(emissions, transitions, start_transitions, end_transitions,
                                    tags, mask)
    return call("crf_nll", emissions.device, emissions, tags, transitions, start_transitions,
                end_transitions, mask=mask, reduction=reduction, **queued)


def crf_decode(emissions: torch.Tensor, transitions: torch.Tensor, start_transitions: torch.Tensor,
               end_transitions: torch.Tensor,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Viterbi: (best_scores (B,), best_tags (B, T) int64, -1 past each sequence's length)."""
    _, mask, queued = _check_crf(emissions, transitions, start_transitions, end_transitions,
                                 mask=mask)
    return call("crf_decode", emissions.device, emissions, transitions, start_transitions,
                end_transitions, mask=mask, **queued)


def crf_marginals(emissions: torch.Tensor, transitions: torch.Tensor,
                  start_transitions: torch.Tensor, end_transitions: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position tag marginals P(y_t = k) (B, T, K); rows past a sequence's length are zero."""
    _, mask, queued = _check_crf(emissions, transitions, start_transitions, end_transitions,
                                 mask=mask)
    return call("crf_marginals", emissions.device, emissions, transitions, start_transitions,
                end_transitions, mask=mask, **queued)


# --- hsigmoid (its row checks serve nce too) ------------------------------------------------

def _check_rows(name, tensor, batch):
    """A per-sample index tensor shaped (N,) or (N, 1) -> int64 (N,)."""
    if tensor.shape not in ((batch,), (batch, 1)):
        raise ValueError(f"{name} must have shape ({batch},) or ({batch}, 1), got {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got {tensor.dtype}")
    return tensor.long().reshape(-1)


def _check_matrix_input(input, weight):
    if input.dim() != 2:
        raise ValueError(f"input must be 2-D (N, D), got shape {tuple(input.shape)}")
    if weight.dim() != 2 or weight.shape[1] != input.shape[1]:
        raise ValueError(f"weight must be 2-D with {input.shape[1]} columns to match input, "
                         f"got shape {tuple(weight.shape)}")


def hsigmoid_loss(input: torch.Tensor, label: torch.Tensor, num_classes: int, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, path_table: torch.Tensor | None = None,
                  path_code: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Paddle's hierarchical sigmoid loss; 'none' gives (N,) (Paddle: (N, 1)).

    Default tree: weight (num_classes - 1, D), bias (num_classes - 1,) or (num_classes - 1, 1),
    labels in [0, num_classes). Custom tree: path_table/path_code (N, L) padded with -1 give each
    sample's inner nodes (rows of weight) and bits; the label is then not used.
    """
    _args.check_same_device(input, label, weight, bias, path_table, path_code)
    reduction = _reduction.check_reduction(reduction)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    _check_matrix_input(input, weight)
    label = _check_rows("label", label, input.shape[0])
    num_nodes = weight.shape[0]
    if bias is not None and bias.shape not in ((num_nodes,), (num_nodes, 1)):
        raise ValueError(f"bias must have shape ({num_nodes},) or ({num_nodes}, 1), got {tuple(bias.shape)}")
    if (path_table is None) != (path_code is None):
        raise ValueError("path_table and path_code must be given together (a custom tree) or not at all")
    if path_table is None:
        if num_nodes != num_classes - 1:
            raise ValueError(f"weight must have num_classes - 1 = {num_classes - 1} rows for the "
                             f"default tree, got {num_nodes}")
        # off the host the forward kernel records each range check as it reads the indices
        queued_index_error = _args.check_in_range(
            label, 0, num_classes, ValueError, f"label must be a class index in [0, {num_classes})",
            kernel_records=True)
    else:
        if (path_table.dim() != 2 or path_table.shape[0] != input.shape[0]
                or path_code.shape != path_table.shape):
            raise ValueError("path_table and path_code must both have shape (N, L), got "
                             f"{tuple(path_table.shape)} and {tuple(path_code.shape)}")
        queued_index_error = _args.check_in_range(
            path_table, -1, num_nodes, ValueError,
            f"path_table entries must be node indices in [0, {num_nodes}) or -1 padding",
            kernel_records=True)
        path_table, path_code = path_table.long(), path_code.long()
    return call("hsigmoid_loss", input.device, input, label, num_classes, weight, bias=bias,
                path_table=path_table, path_code=path_code, reduction=reduction,
                queued_index_error=queued_index_error)


# --- nce ------------------------------------------------------------------------------------

def nce_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, noise_samples: torch.Tensor, noise_log_probs: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """Noise-contrastive estimation: per sample -log sigmoid(o_t - log b_t) - sum_j
    log sigmoid(log b_j - o_j), o_c = input . weight[c] + bias[c], b_c = k * exp(noise_log_probs[c]).

    input (N, D), target (N,) or (N, 1), weight (C, D), bias (C,) or None, noise_samples (N, k)
    drawn by the caller, noise_log_probs (C,) the log noise probability of every class.
    """
    _args.check_same_device(input, target, weight, bias, noise_samples, noise_log_probs)
    reduction = _reduction.check_reduction(reduction)
    _check_matrix_input(input, weight)
    batch, num_classes = input.shape[0], weight.shape[0]
    target = _check_rows("target", target, batch)
    if bias is not None and bias.shape != (num_classes,):
        raise ValueError(f"bias must have shape ({num_classes},), got {tuple(bias.shape)}")
    if noise_samples.dim() != 2 or noise_samples.shape[0] != batch:
        raise ValueError(f"noise_samples must have shape ({batch}, k), got {tuple(noise_samples.shape)}")
    if noise_samples.is_floating_point() or noise_samples.is_complex():
        raise ValueError(f"noise_samples must be an integer tensor, got {noise_samples.dtype}")
    if noise_log_probs.shape != (num_classes,):
        raise ValueError(f"noise_log_probs must have shape ({num_classes},), got "
                         f"{tuple(noise_log_probs.shape)}")
    noise_samples = noise_samples.long()
    # off the host the forward kernel records each range check as it reads the classes
    queued_target_error, queued_noise_error = (
        _args.check_in_range(index, 0, num_classes, IndexError,
                             f"{name} out of range: expected class indices in [0, {num_classes})",
                             kernel_records=True)
        for name, index in (("target", target), ("noise_samples", noise_samples)))
    return call("nce_loss", input.device, input, target, weight, bias, noise_samples,
                noise_log_probs, reduction=reduction, queued_target_error=queued_target_error,
                queued_noise_error=queued_noise_error)
