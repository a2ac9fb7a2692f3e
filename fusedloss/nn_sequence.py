"""Modules for the sequence and structured losses, thin wrappers over functional_sequence.

CTCLoss mirrors torch.nn.CTCLoss; CRF is a drop-in for pytorch-crf's torchcrf.CRF; HSigmoidLoss
and NCELoss follow Paddle's layers, own their weight and bias (Xavier-uniform weight, zero bias,
Paddle's defaults) and reduce with `reduction` ('mean' by default, keyword-only; Paddle returns
the (N, 1) per-sample losses, which reduction='none' gives as (N,)).
"""
import math

import torch
from torch import nn

from . import functional_sequence as F

__all__ = ["CRF", "CTCLoss", "HSigmoidLoss", "NCELoss"]


class CTCLoss(nn.Module):
    """torch.nn.CTCLoss: forward(log_probs, targets, input_lengths, target_lengths)."""

    def __init__(self, blank=0, reduction="mean", zero_infinity=False):
        super().__init__()
        self.blank = blank
        self.reduction = reduction
        self.zero_infinity = zero_infinity

    def forward(self, log_probs, targets, input_lengths, target_lengths):
        return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                          reduction=self.reduction, zero_infinity=self.zero_infinity)


def _swap_time_batch(tensor):
    """(T, B, ...) <-> (B, T, ...); tensors of the wrong rank pass through to fail the shape checks."""
    return tensor.transpose(0, 1) if tensor is not None and tensor.dim() >= 2 else tensor


class CRF(nn.Module):
    """Linear-chain CRF, compatible with pytorch-crf's torchcrf.CRF (same parameters, same results).

    forward(emissions, tags, mask=None, reduction='sum') returns the log-likelihood (not its
    negation), reduced with 'none' | 'sum' | 'mean' | 'token_mean'; decode(emissions, mask=None)
    returns the best tag sequence of each batch entry as a list of lists. Inputs are (T, B, ...)
    unless batch_first.
    """

    def __init__(self, num_tags, batch_first=False):
        if num_tags <= 0:
            raise ValueError(f"invalid number of tags: {num_tags}")
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.reset_parameters()

    def reset_parameters(self):
        """Uniform in [-0.1, 0.1], as pytorch-crf."""
        for parameter in (self.start_transitions, self.end_transitions, self.transitions):
            nn.init.uniform_(parameter, -0.1, 0.1)

    def __repr__(self):
        return f"{self.__class__.__name__}(num_tags={self.num_tags})"

    def _batch_first(self, *tensors):
        return tensors if self.batch_first else tuple(_swap_time_batch(t) for t in tensors)

    def forward(self, emissions, tags, mask=None, reduction="sum"):
        if reduction not in ("none", "sum", "mean", "token_mean"):
            raise ValueError(f"invalid reduction: {reduction}")
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

    def decode(self, emissions, mask=None):
        emissions, mask = self._batch_first(emissions, mask)
        _, best_tags = F.crf_decode(emissions, self.transitions, self.start_transitions,
                                    self.end_transitions, mask=mask)
        return [row[row >= 0].tolist() for row in best_tags]


class HSigmoidLoss(nn.Module):
    """Paddle's HSigmoidLoss: weight (num_classes - 1, feature_size) for the default tree, or
    (num_classes, feature_size) when is_custom (num_classes then counts the inner nodes, as in
    Paddle). forward(input, label, path_table=None, path_code=None); a custom tree needs both."""

    def __init__(self, feature_size, num_classes, bias=True, is_custom=False, *, reduction="mean"):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.is_custom = is_custom
        self.reduction = reduction
        num_nodes = num_classes if is_custom else num_classes - 1
        self.weight = nn.Parameter(torch.empty(num_nodes, feature_size))
        self.bias = nn.Parameter(torch.zeros(num_nodes)) if bias else None
        nn.init.xavier_uniform_(self.weight)

    def forward(self, input, label, path_table=None, path_code=None):
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


class NCELoss(nn.Module):
    """Paddle's NCE layer: owns weight (num_classes, embedding_dim) and bias (num_classes,), and
    draws num_neg_samples negatives per sample (with replacement) from `sampler`: 'uniform',
    'log_uniform' (Zipfian, for classes sorted by decreasing frequency) or a tensor of class
    weights (normalised here). forward(input, target)."""

    def __init__(self, num_classes, embedding_dim, num_neg_samples=10, sampler="uniform", *,
                 reduction="mean"):
        super().__init__()
        self.num_classes = num_classes
        self.num_neg_samples = num_neg_samples
        self.reduction = reduction
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("noise_log_probs", _noise_log_probs(sampler, num_classes))

    def forward(self, input, target):
        batch = input.shape[0]
        noise_samples = torch.multinomial(self.noise_log_probs.exp(), batch * self.num_neg_samples,
                                          replacement=True).view(batch, self.num_neg_samples)
        return F.nce_loss(input, target, self.weight, self.bias, noise_samples,
                          self.noise_log_probs, reduction=self.reduction)
