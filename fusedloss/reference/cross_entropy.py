"""The cross-entropy family as its textbook formulas: cross entropy, NLL and softmax focal loss.
Class dimension is dim 1 (dim 0 for a single sample),
as in torch; everything below moves it last and works per token.
"""
import torch

from .. import _args
from .._reduction import reduce


def _classes_last(input):
    return input.unsqueeze(0).movedim(1, -1) if input.dim() == 1 else input.movedim(1, -1)


def _restore_batch(values, input):
    """Per-token values back to the target's shape (0-d for a single unbatched sample)."""
    return values.squeeze(0) if input.dim() == 1 else values


def _queue_class_indices(input, target, ignore_index, message):
    if message is not None:
        _args.queue_class_indices(target, input.shape[1] if input.dim() > 1 else input.shape[0],
                                  ignore_index, message)


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, return_lse=False,
                  inplace_backward=False, queued_index_error=None):
    """torch's cross entropy plus z-loss (z * lse**2 per token) and tanh soft-capping.

    Mean reduction divides by the sum of target-class weights of the non-ignored tokens (hard
    labels) or by the token count (soft labels), as torch does; the z-loss term is unweighted and
    shares that denominator. `inplace_backward` is a kernel memory option with no meaning here.
    queued_index_error: where functional.py left the class-index check to the call (CUDA,
    torch.compile), its message, queued on the device here.
    """
    _queue_class_indices(input, target, ignore_index, queued_index_error)
    logits = _classes_last(input)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    num_classes = logits.shape[-1]
    lse = torch.logsumexp(logits, dim=-1)
    log_probs = logits - lse.unsqueeze(-1)
    class_weight = log_probs.new_ones(num_classes) if weight is None else weight.to(log_probs.dtype)

    if target.is_floating_point():  # soft labels: class probabilities shaped like the input
        probs = _classes_last(target).to(log_probs.dtype)
        probs = probs * (1 - label_smoothing) + label_smoothing / num_classes
        per_token = -(log_probs * probs * class_weight).sum(-1) + z_loss * lse ** 2
        denominator = per_token.numel()
    else:
        target = target.unsqueeze(0) if input.dim() == 1 else target
        kept = target != ignore_index
        safe_target = torch.where(kept, target, 0).long()
        target_weight = torch.where(kept, class_weight[safe_target], 0)
        per_token = -log_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1) * target_weight
        if label_smoothing:  # skipped at 0 so a -inf logit cannot turn 0 * inf into NaN
            smooth = -(log_probs * class_weight).sum(-1) / num_classes
            per_token = (1 - label_smoothing) * per_token + label_smoothing * smooth
        if z_loss:
            per_token = per_token + z_loss * lse ** 2
        per_token = torch.where(kept, per_token, 0)
        denominator = target_weight.sum()
    loss = reduce(_restore_batch(per_token, input), reduction, denominator)
    if return_lse:
        return loss, _restore_batch(lse, input).detach()
    return loss


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean",
             queued_index_error=None):
    """Negative log-likelihood of the target class; mean divides by the kept targets' weights.
    queued_index_error: as cross_entropy's."""
    _queue_class_indices(input, target, ignore_index, queued_index_error)
    log_probs = _classes_last(input)
    target = target.unsqueeze(0) if input.dim() == 1 else target
    kept = target != ignore_index
    safe_target = torch.where(kept, target, 0).long()
    class_weight = log_probs.new_ones(log_probs.shape[-1]) if weight is None else weight.to(log_probs.dtype)
    target_weight = torch.where(kept, class_weight[safe_target], 0)
    per_token = torch.where(kept, -log_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1) * target_weight, 0)
    return reduce(_restore_batch(per_token, input), reduction, target_weight.sum())


def softmax_focal_loss(input, target, alpha=None, gamma=2.0, ignore_index=-100, reduction="mean",
                       queued_index_error=None):
    """Multi-class focal loss -alpha[t] * (1 - p_t)**gamma * log p_t; mean over kept tokens.
    queued_index_error: as cross_entropy's."""
    _queue_class_indices(input, target, ignore_index, queued_index_error)
    log_probs = torch.log_softmax(_classes_last(input), dim=-1)
    target = target.unsqueeze(0) if input.dim() == 1 else target
    kept = target != ignore_index
    safe_target = torch.where(kept, target, 0).long()
    log_pt = log_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    # (1 - p_t)**gamma has an infinite slope at p_t = 1 for gamma < 1, while the loss's gradient
    # tends to 0 there (log p_t vanishes faster): the double `where` gives autograd that limit.
    uncertain = log_pt < 0
    modulating = torch.where(uncertain, -torch.expm1(torch.where(uncertain, log_pt, -1.0)), 0) ** gamma
    per_token = torch.where(kept, -modulating * log_pt, 0)
    if alpha is not None:
        per_token = per_token * alpha.to(per_token.dtype)[safe_target]
    return reduce(_restore_batch(per_token, input), reduction, kept.sum())
