"""Paddle Fluid's loss names, for code ported from Fluid: thin mappings onto fusedloss.functional
(same kernels, same gradients) keeping Fluid's argument names, defaults and output shapes.

Where Fluid and torch disagree, these follow Fluid; each docstring says where. Fluid's LoD
(ragged) tensors have no torch counterpart: the sequence layers (warpctc, linear_chain_crf,
crf_decoding) take Fluid's padded form, a batch of equal-length rows plus a length tensor, and
per-sample losses keep Fluid's (N, 1) shape.
"""
import torch
from torch import Tensor

from . import functional as F

__all__ = [
    "crf_decoding", "cross_entropy", "dice_loss", "hsigmoid", "linear_chain_crf",
    "margin_rank_loss", "nce", "rank_loss", "sigmoid_cross_entropy_with_logits", "smooth_l1",
    "softmax_with_cross_entropy", "square_error_cost", "warpctc",
]


def square_error_cost(input: Tensor, label: Tensor) -> Tensor:
    """(input - label)**2 per element, no reduction (Fluid has no reduction argument here)."""
    return F.mse_loss(input, label, reduction="none")


def smooth_l1(x: Tensor, y: Tensor, inside_weight: Tensor | None = None,
              outside_weight: Tensor | None = None, sigma: float = 1.0) -> Tensor:
    """Fluid's smooth L1: with d = inside_weight * (x - y), 0.5 * (sigma * d)**2 where
    |d| < 1 / sigma**2 else |d| - 0.5 / sigma**2, times outside_weight, summed over every
    dimension but the first: shape (N, 1). torch's beta is 1 / sigma**2 and torch reduces over
    all elements instead."""
    if inside_weight is not None:
        x, y = x * inside_weight, y * inside_weight
    loss = F.smooth_l1_loss(x, y, reduction="none", beta=1.0 / sigma ** 2)
    if outside_weight is not None:
        loss = loss * outside_weight
    return loss.reshape(loss.shape[0], -1).sum(1, keepdim=True)


def softmax_with_cross_entropy(logits: Tensor, label: Tensor, soft_label: bool = False,
                               ignore_index: int = -100, axis: int = -1,
                               return_softmax: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Cross entropy on logits along `axis` (Fluid: the last by default, torch: dim 1). Hard
    labels carry a size-1 dimension at `axis`; the loss keeps it (shape of logits with 1 at
    `axis`), ignored positions give 0 and nothing is reduced."""
    axis = axis % logits.dim()
    moved = logits.movedim(axis, 1)
    if soft_label:
        target = label.movedim(axis, 1)
    else:
        target = label.squeeze(axis).long()
    loss = F.cross_entropy(moved, target, ignore_index=ignore_index, reduction="none")
    loss = loss.unsqueeze(axis)
    if return_softmax:
        return loss, torch.softmax(logits, dim=axis)
    return loss


def cross_entropy(input: Tensor, label: Tensor, soft_label: bool = False,
                  ignore_index: int = -100) -> Tensor:
    """Fluid's cross entropy on probabilities (not logits, unlike torch): -log input[label] per
    row, shape (N, 1), 0 where label == ignore_index; soft labels give -sum(label * log input)."""
    log_probs = torch.log(input)
    if soft_label:
        return -(label * log_probs).sum(-1, keepdim=True)
    loss = F.nll_loss(log_probs.movedim(-1, 1), label.squeeze(-1).long(),
                      ignore_index=ignore_index, reduction="none")
    return loss.unsqueeze(-1)


def sigmoid_cross_entropy_with_logits(x: Tensor, label: Tensor, ignore_index: int = -100,
                                      normalize: bool = False) -> Tensor:
    """Element-wise BCE on logits; elements whose label equals ignore_index give 0 (torch has no
    ignore_index here), and normalize=True divides by the number of elements not ignored."""
    kept = (label != ignore_index).to(x.dtype)
    loss = F.binary_cross_entropy_with_logits(x, label * kept, weight=kept, reduction="none")
    if normalize:
        loss = loss / kept.sum().clamp(min=1)
    return loss


def rank_loss(label: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """RankNet per pair, no reduction: log(1 + exp(left - right)) - label * (left - right)."""
    return F.rank_loss(label, left, right, reduction="none")


def margin_rank_loss(label: Tensor, left: Tensor, right: Tensor, margin: float = 0.1) -> Tensor:
    """max(0, -label * (left - right) + margin) per pair, no reduction; Fluid's default margin is
    0.1 where torch's is 0, and the label comes first."""
    return F.margin_ranking_loss(left, right, label, margin=margin, reduction="none")


def dice_loss(input: Tensor, label: Tensor, epsilon: float = 1e-5) -> Tensor:
    """Mean over the batch of 1 - 2|X∩Y| / (|X| + |Y| + epsilon), label one-hot over the last dim."""
    return F.dice_loss(input, label, epsilon=epsilon)


def _per_sample(loss):
    return loss.unsqueeze(1)


def warpctc(input: Tensor, label: Tensor, blank: int = 0, norm_by_times: bool = False,
            input_length: Tensor | None = None, label_length: Tensor | None = None) -> Tensor:
    """fluid.layers.warpctc on padded input: per-sequence CTC loss, shape (N, 1).

    Unlike torch.nn.functional.ctc_loss, `input` holds UNSCALED logits (T, N, C): Fluid's warp-ctc
    applies the softmax itself, so this maps onto ctc_loss_with_logits. `label` is (N, S) padded,
    `input_length`/`label_length` (N,) default to the full T and S. norm_by_times, as in Fluid,
    leaves the loss value alone and divides each sequence's GRADIENT by its input length. No
    reduction and no zero_infinity: Fluid has neither.
    """
    if input.dim() != 3:
        raise ValueError(f"warpctc expects padded input (T, N, C), got shape {tuple(input.shape)}")
    frames, batch = input.shape[:2]
    if input_length is None:
        input_length = torch.full((batch,), frames, dtype=torch.int64, device=input.device)
    if label_length is None:
        label_length = torch.full((batch,), label.shape[-1], dtype=torch.int64, device=input.device)
    input_length = torch.as_tensor(input_length, device=input.device).reshape(-1)
    label_length = torch.as_tensor(label_length, device=input.device).reshape(-1)
    loss = F.ctc_loss_with_logits(input, label, input_length, label_length, blank=blank,
                                  reduction="none")
    if norm_by_times and loss.requires_grad:
        steps = input_length.to(loss.dtype)
        loss.register_hook(lambda grad: grad / steps)
    return _per_sample(loss)


def _fluid_crf_args(input, transition, length):
    """Fluid's (K + 2, K) transition (row 0 start, row 1 end, rows 2: tag i -> tag j) and the
    length tensor -> crf arguments (transitions, start, end, mask)."""
    if input.dim() != 3:
        raise ValueError(f"expected padded emissions (N, T, K), got shape {tuple(input.shape)}")
    num_tags = input.shape[2]
    if transition.shape != (num_tags + 2, num_tags):
        raise ValueError(f"transition must have shape ({num_tags + 2}, {num_tags}) (start row, end "
                         f"row, then the tag-to-tag matrix), got {tuple(transition.shape)}")
    mask = None
    if length is not None:
        length = torch.as_tensor(length, device=input.device).reshape(-1, 1)
        mask = torch.arange(input.shape[1], device=input.device) < length
    return transition[2:], transition[0], transition[1], mask


def linear_chain_crf(input: Tensor, label: Tensor, transition: Tensor,
                     length: Tensor | None = None) -> Tensor:
    """fluid.layers.linear_chain_crf on padded input: per-sequence negative log-likelihood (N, 1).

    input (N, T, K) emissions, label (N, T) or (N, T, 1), transition (K + 2, K) in Fluid's layout:
    row 0 start weights, row 1 end weights, rows 2: the K x K tag-to-tag weights. length (N,)
    defaults to T; every length must be at least 1. Fluid names the output LogLikelihood but it
    holds the NLL, which is what this returns.
    """
    transitions, start, end, mask = _fluid_crf_args(input, transition, length)
    label = label.reshape(label.shape[:2]) if label.dim() == 3 else label
    return _per_sample(F.crf_nll(input, label, transitions, start, end, mask=mask, reduction="none"))


def crf_decoding(input: Tensor, transition: Tensor, label: Tensor | None = None,
                 length: Tensor | None = None) -> Tensor:
    """fluid.layers.crf_decoding on padded input: the Viterbi path (N, T) int64.

    Positions past a sequence's length hold 0 (Fluid's padding; crf_decode pads with -1). With
    `label` (N, T) or (N, T, 1) it returns, as Fluid does, 1 where the path equals the label and 0
    elsewhere (0 past each length) instead of the path.
    """
    transitions, start, end, mask = _fluid_crf_args(input, transition, length)
    _, path = F.crf_decode(input, transitions, start, end, mask=mask)
    inside = path >= 0
    path = path.clamp(min=0)
    if label is None:
        return path
    label = label.reshape(label.shape[:2]) if label.dim() == 3 else label
    return ((path == label) & inside).long()


def hsigmoid(input: Tensor, label: Tensor, num_classes: int, weight: Tensor,
             bias: Tensor | None = None, path_table: Tensor | None = None,
             path_code: Tensor | None = None, is_custom: bool = False) -> Tensor:
    """fluid.layers.hsigmoid: per-sample hierarchical sigmoid loss, shape (N, 1).

    weight (num_classes - 1, D) and bias (num_classes - 1, 1) for the default tree; with
    is_custom, path_table/path_code (N, L) padded with -1 give each sample's path. Fluid clips
    the node logits to [-40, 40] first; this does not (it differs only where |z| > 40).
    """
    if is_custom != (path_table is not None):
        raise ValueError("path_table and path_code are required when is_custom=True and not "
                         "accepted otherwise")
    return _per_sample(F.hsigmoid_loss(input, label, num_classes, weight, bias, path_table=path_table,
                                       path_code=path_code, reduction="none"))


def nce(input: Tensor, label: Tensor, num_total_classes: int, weight: Tensor, bias: Tensor | None,
        noise_samples: Tensor, noise_log_probs: Tensor) -> Tensor:
    """fluid.layers.nce with caller-drawn negatives: per-sample NCE loss, shape (N, 1).

    Fluid draws the negatives itself (sampler, custom_dist, seed); here they come in as
    noise_samples (N, k) with noise_log_probs (C,). The formula is Fluid's (o = sigmoid(s) rather
    than textbook NCE's exp(s)), as in nce_loss. sample_weight is not supported.
    """
    if weight.shape[0] != num_total_classes:
        raise ValueError(f"weight must have num_total_classes = {num_total_classes} rows, got "
                         f"{weight.shape[0]}")
    return _per_sample(F.nce_loss(input, label, weight, bias, noise_samples, noise_log_probs,
                                  reduction="none"))
