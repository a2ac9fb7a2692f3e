"""Loss modules mirroring torch.nn's constructors; each forward is one fusedloss.functional call.

Class weights are registered as buffers (as torch does), so they follow `.to()` and state_dict.
CTCLoss mirrors torch.nn.CTCLoss; CRF is a drop-in for pytorch-crf's torchcrf.CRF; HSigmoidLoss
and NCELoss follow Paddle's layers, own their weight and bias (Xavier-uniform weight, zero bias,
Paddle's defaults) and reduce with `reduction` ('mean' by default, keyword-only; Paddle returns
the (N, 1) per-sample losses, which reduction='none' gives as (N,)).
"""
import math

import torch
from torch import Tensor

from . import _reduction
from . import functional as F

__all__ = [
    "BCELoss", "BCEWithLogitsLoss", "CRF", "CTCLoss", "CrossEntropyLoss", "DiceLoss",
    "HSigmoidLoss", "HuberLoss", "L1Loss", "LinearCrossEntropyLoss", "MSELoss",
    "MarginRankingLoss", "NCELoss", "NLLLoss", "RankLoss", "SigmoidFocalLoss", "SmoothL1Loss",
    "SoftmaxFocalLoss",
]


class _Loss(torch.nn.Module):
    """Stores the reduction, mapping torch's deprecated size_average/reduce as torch does."""

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _reduction.reduction_from_legacy(size_average, reduce, reduction)


class _WeightedLoss(_Loss):
    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """torch.nn.CrossEntropyLoss; keyword-only extras as in fusedloss.functional.cross_entropy."""

    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 ignore_index: int = -100, reduce: bool | None = None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                 softcap: float | None = None, return_lse: bool = False,
                 inplace_backward: bool = False) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.return_lse = return_lse
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               z_loss=self.z_loss, softcap=self.softcap,
                               return_lse=self.return_lse, inplace_backward=self.inplace_backward)


class NLLLoss(_WeightedLoss):
    """torch.nn.NLLLoss: the negative log-likelihood of log-probabilities `input` (N, C) or
    (N, C, d1, ...) at class indices `target`, with class `weight` and `ignore_index`."""

    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 ignore_index: int = -100, reduce: bool | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class BCEWithLogitsLoss(_WeightedLoss):
    """torch.nn.BCEWithLogitsLoss: binary cross entropy on logits, with an element `weight`
    and a per-class `pos_weight` broadcast over the last dimension (both buffers)."""

    def __init__(self, weight: Tensor | None = None, size_average: bool | None = None,
                 reduce: bool | None = None, reduction: str = "mean",
                 pos_weight: Tensor | None = None) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class BCELoss(_WeightedLoss):
    """torch.nn.BCELoss: binary cross entropy on probabilities in [0, 1], logs clamped at -100
    as torch's; an input outside [0, 1] raises before any kernel runs."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    """torch.nn.SmoothL1Loss: quadratic below `beta`, linear above (`beta=0` is L1)."""

    def __init__(self, size_average: bool | None = None, reduce: bool | None = None,
                 reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(_Loss):
    """torch.nn.HuberLoss: quadratic below `delta`, linear above (SmoothL1 scaled by delta)."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction=reduction)
        self.delta = delta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class L1Loss(_Loss):
    """torch.nn.L1Loss: the mean (or sum, or none) absolute error."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(_Loss):
    """torch.nn.MSELoss: the mean (or sum, or none) squared error."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class MarginRankingLoss(_Loss):
    """torch.nn.MarginRankingLoss: max(0, -target * (input1 - input2) + margin), target
    +1 or -1."""

    def __init__(self, margin: float = 0.0, size_average: bool | None = None,
                 reduce: bool | None = None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.margin = margin

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.margin_ranking_loss(input1, input2, target, margin=self.margin,
                                     reduction=self.reduction)


class LinearCrossEntropyLoss(_WeightedLoss):
    """torch.nn.LinearCrossEntropyLoss: owns the projection as `self.linear` (same state_dict
    keys as torch) and never materialises the (N, C) logits. With `out_features` (d1, ..., dk)
    the weight is stored flat as (C * d1 * ... * dk, in_features), as torch stores it, and
    reshaped to the K-dimensional classifier (C, d1, ..., dk, in_features) in forward."""

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (),
                 bias: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, reduction: str = "mean",
                 weight: Tensor | None = None, ignore_index: int | None = None,
                 label_smoothing: float = 0.0, options: object = None) -> None:
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        super().__init__(weight, reduction=reduction)
        self.num_classes = num_classes
        self.out_features = tuple(out_features)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.options = options
        self.linear = torch.nn.Linear(in_features, math.prod(self.out_features, start=num_classes),
                                      bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        classes = (self.num_classes, *self.out_features)
        bias = None if self.linear.bias is None else self.linear.bias.reshape(classes)
        return F.linear_cross_entropy(input, self.linear.weight.reshape(*classes, -1), target,
                                      linear_bias=bias, weight=self.weight,
                                      reduction=self.reduction, ignore_index=self.ignore_index,
                                      label_smoothing=self.label_smoothing, options=self.options)


class SigmoidFocalLoss(torch.nn.Module):
    """torchvision's sigmoid_focal_loss as a module: binary cross entropy on logits scaled by
    (1 - p_t)**gamma and, unless alpha < 0, by alpha for positives and 1 - alpha for negatives;
    reduction 'none' by default, as torchvision's."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return F.sigmoid_focal_loss(inputs, targets, alpha=self.alpha, gamma=self.gamma,
                                    reduction=self.reduction)


class SoftmaxFocalLoss(torch.nn.Module):
    """Multi-class focal loss on logits (N, C): -alpha[target] * (1 - p_t)**gamma *
    log(p_t), `alpha` an optional per-class weight buffer; 'mean' averages over the tokens
    whose target is not `ignore_index`."""

    def __init__(self, alpha: Tensor | None = None, gamma: float = 2.0, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("alpha", alpha)
        self.gamma, self.ignore_index, self.reduction = gamma, ignore_index, reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.softmax_focal_loss(input, target, alpha=self.alpha, gamma=self.gamma,
                                    ignore_index=self.ignore_index, reduction=self.reduction)


class RankLoss(torch.nn.Module):
    """RankNet's pairwise loss (Paddle's rank_loss): log(1 + exp(left - right)) - label *
    (left - right), label the probability that left ranks above right."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, label: Tensor, left: Tensor, right: Tensor) -> Tensor:
        return F.rank_loss(label, left, right, reduction=self.reduction)


class DiceLoss(torch.nn.Module):
    """Paddle's dice loss: input the probabilities (N, ..., C), label class indices
    (N, ..., 1); per sample 1 - 2 |X and Y| / (|X| + |Y| + epsilon), then reduced."""

    def __init__(self, epsilon: float = 1e-5, reduction: str = "mean") -> None:
        super().__init__()
        self.epsilon, self.reduction = epsilon, reduction

    def forward(self, input: Tensor, label: Tensor) -> Tensor:
        return F.dice_loss(input, label, epsilon=self.epsilon, reduction=self.reduction)


class CTCLoss(torch.nn.Module):
    """torch.nn.CTCLoss: forward(log_probs, targets, input_lengths, target_lengths), log_probs
    (T, N, C); targets padded (N, S) or concatenated, lengths as tensors or lists."""

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> None:
        super().__init__()
        self.blank = blank
        self.reduction = reduction
        self.zero_infinity = zero_infinity

    def forward(self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor | list[int],
                target_lengths: Tensor | list[int]) -> Tensor:
        return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                          reduction=self.reduction, zero_infinity=self.zero_infinity)


def _swap_time_batch(tensor):
    """(T, B, ...) <-> (B, T, ...); tensors of the wrong rank pass through to fail the shape checks."""
    return tensor.transpose(0, 1) if tensor is not None and tensor.dim() >= 2 else tensor


class CRF(torch.nn.Module):
    """Linear-chain CRF, compatible with pytorch-crf's torchcrf.CRF (same parameters, same results).

    forward(emissions, tags, mask=None, reduction='sum') returns the log-likelihood (not its
    negation), reduced with 'none' | 'sum' | 'mean' | 'token_mean'; decode(emissions, mask=None)
    returns the best tag sequence of each batch entry as a list of lists. Inputs are (T, B, ...)
    unless batch_first.
    """

    def __init__(self, num_tags: int, batch_first: bool = False) -> None:
        if num_tags <= 0:
            raise ValueError(f"invalid number of tags: {num_tags}")
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.start_transitions = torch.nn.Parameter(torch.empty(num_tags))
        self.end_transitions = torch.nn.Parameter(torch.empty(num_tags))
        self.transitions = torch.nn.Parameter(torch.empty(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in [-0.1, 0.1], as pytorch-crf."""
        for parameter in (self.start_transitions, self.end_transitions, self.transitions):
            torch.nn.init.uniform_(parameter, -0.1, 0.1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_tags={self.num_tags})"

    def _batch_first(self, *tensors):
        return tensors if self.batch_first else tuple(_swap_time_batch(t) for t in tensors)

    def _validate(self, emissions, tags=None, mask=None):
        """pytorch-crf's shape checks, in the caller's layout (its messages name the shapes as
        passed); the mask's first step is checked by functional, on the batch-first view."""
        if emissions.dim() != 3:
            raise ValueError(f"emissions must have dimension of 3, got {emissions.dim()}")
        if emissions.size(2) != self.num_tags:
            raise ValueError(f"expected last dimension of emissions is {self.num_tags}, "
                             f"got {emissions.size(2)}")
        for name, other in (("tags", tags), ("mask", mask)):
            if other is not None and emissions.shape[:2] != other.shape:
                raise ValueError(f"the first two dimensions of emissions and {name} must match, "
                                 f"got {tuple(emissions.shape[:2])} and {tuple(other.shape)}")

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None,
                reduction: str = "sum") -> Tensor:
        if reduction not in ("none", "sum", "mean", "token_mean"):
            raise ValueError(f"invalid reduction: {reduction}")
        self._validate(emissions, tags, mask)
        emissions, tags, mask = self._batch_first(emissions, tags, mask)
        log_likelihood = -F.crf_nll(emissions, tags, self.transitions, self.start_transitions,
                                    self.end_transitions, mask=mask, reduction="none")
        if reduction == "none":
            return log_likelihood
        if reduction == "sum":
            return log_likelihood.sum()
        if reduction == "mean":
            return log_likelihood.mean()
        num_tokens = tags.numel() if mask is None else mask.sum()
        return log_likelihood.sum() / num_tokens

    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> list[list[int]]:
        self._validate(emissions, mask=mask)
        emissions, mask = self._batch_first(emissions, mask)
        _, best_tags = F.crf_decode(emissions, self.transitions, self.start_transitions,
                                    self.end_transitions, mask=mask)
        return [[tag for tag in row if tag >= 0] for row in best_tags.tolist()]  # one host read


class HSigmoidLoss(torch.nn.Module):
    """Paddle's HSigmoidLoss: weight (num_classes - 1, feature_size) for the default tree, or
    (num_classes, feature_size) when is_custom (num_classes then counts the inner nodes, as in
    Paddle). forward(input, label, path_table=None, path_code=None); a custom tree needs both."""

    def __init__(self, feature_size: int, num_classes: int, bias: bool = True,
                 is_custom: bool = False, *, reduction: str = "mean") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.is_custom = is_custom
        self.reduction = reduction
        num_nodes = num_classes if is_custom else num_classes - 1
        self.weight = torch.nn.Parameter(torch.empty(num_nodes, feature_size))
        self.bias = torch.nn.Parameter(torch.zeros(num_nodes)) if bias else None
        torch.nn.init.xavier_uniform_(self.weight)

    def forward(self, input: Tensor, label: Tensor, path_table: Tensor | None = None,
                path_code: Tensor | None = None) -> Tensor:
        if self.is_custom != (path_table is not None):
            raise ValueError("path_table and path_code are required when is_custom=True and "
                             "not accepted otherwise")
        return F.hsigmoid_loss(input, label, self.num_classes, self.weight, self.bias,
                               path_table=path_table, path_code=path_code, reduction=self.reduction)


def _noise_log_probs(sampler, num_classes):
    if isinstance(sampler, torch.Tensor):
        if sampler.shape != (num_classes,) or bool((sampler < 0).any()) or not bool(sampler.sum() > 0):
            raise ValueError(f"a custom sampler must be {num_classes} non-negative weights, not all zero")
        return torch.log(sampler.double() / sampler.double().sum()).float()
    classes = torch.arange(num_classes, dtype=torch.float64)
    if sampler == "uniform":
        return torch.full((num_classes,), -math.log(num_classes))
    if sampler == "log_uniform":  # Zipfian: P(c) = log((c + 2) / (c + 1)) / log(C + 1)
        probs = torch.log((classes + 2) / (classes + 1)) / math.log(num_classes + 1)
        return torch.log(probs).float()
    raise ValueError(f"sampler must be 'uniform', 'log_uniform' or a tensor of class weights, got {sampler!r}")


class NCELoss(torch.nn.Module):
    """Paddle's NCE layer: owns weight (num_classes, embedding_dim) and bias (num_classes,), and
    draws num_neg_samples negatives per sample (with replacement) from `sampler`: 'uniform',
    'log_uniform' (Zipfian, for classes sorted by decreasing frequency) or a tensor of class
    weights (normalised here). forward(input, target)."""

    def __init__(self, num_classes: int, embedding_dim: int, num_neg_samples: int = 10,
                 sampler: str | Tensor = "uniform", *, reduction: str = "mean") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_neg_samples = num_neg_samples
        self.reduction = reduction
        self.weight = torch.nn.Parameter(torch.empty(num_classes, embedding_dim))
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))
        torch.nn.init.xavier_uniform_(self.weight)
        self.register_buffer("noise_log_probs", _noise_log_probs(sampler, num_classes))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        batch = input.shape[0]
        noise_samples = torch.multinomial(self.noise_log_probs.exp(), batch * self.num_neg_samples,
                                          replacement=True).view(batch, self.num_neg_samples)
        return F.nce_loss(input, target, self.weight, self.bias, noise_samples,
                          self.noise_log_probs, reduction=self.reduction)
