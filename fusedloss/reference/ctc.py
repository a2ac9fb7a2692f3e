"""Connectionist temporal classification as the textbook alpha (forward) recursion in log space.

The target l_1..l_L is extended with blanks, b l_1 b l_2 ... l_L b (2L+1 states: blanks at even
positions, labels at odd ones). An alignment moves through the states one frame at a time: stay,
step to the next state, or skip the blank in between two labels when they differ. The loss is
-log of the total probability of the alignments that end on the last label or the final blank.
Autograd through the recursion gives the gradient.
"""
import torch

from .. import _args
from .._reduction import reduce


def safe_logsumexp(x, dim):
    """torch.logsumexp whose gradient is 0 rather than nan where every term is -inf.

    Unreachable states (-inf) are routine in these recursions; torch.logsumexp's backward computes
    exp(-inf - -inf) = nan there, and 0 * nan poisons the gradient. Shifting by a detached finite
    maximum keeps the value (the shift cancels exactly) and the double `where` keeps log(0) out
    of the backward pass.
    """
    shift = x.amax(dim, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = torch.exp(x - shift).sum(dim)
    reachable = total > 0
    log_total = torch.log(torch.where(reachable, total, torch.ones_like(total)))
    return torch.where(reachable, log_total, torch.full_like(total, -torch.inf)) + shift.squeeze(dim)


def _padded_targets(targets, target_lengths):
    """Concatenated 1-D targets -> (N, S) padded rows; padded targets pass through."""
    if targets.dim() == 2:
        return targets
    width = int(target_lengths.max()) if target_lengths.numel() else 0
    rows = torch.split(targets, target_lengths.tolist())
    padded = targets.new_zeros(len(rows), width)
    for row, values in zip(padded, rows):
        row[: values.numel()] = values
    return padded


def _interleave(blank_state, label_states):
    """(N, 2S+1) states from (N, S) label_states at the odd states and one value broadcast to
    every even state. Built out of place, so that torch.func.vmap can batch it."""
    rows, width = label_states.shape
    pairs = torch.stack([blank_state.expand(rows, width), label_states], dim=2)
    return torch.cat([pairs.reshape(rows, 2 * width), blank_state.expand(rows, 1)], dim=1)


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
             zero_infinity=False, queued_label_error=None):
    """torch.nn.functional.ctc_loss: log_probs (T, N, C) or (T, C), lengths as int64 tensors.

    An infeasible alignment (input too short for the target) gives an infinite loss; its gradient
    here is 0 (torch's can be nan). zero_infinity=True replaces infinite losses by 0.
    Autograd gives the true d loss / d log_probs; torch's native backward returns that plus
    exp(log_probs) inside each input length, a difference log_softmax's backward removes, so the
    two agree on gradients taken through log_softmax. queued_label_error: where functional.py
    left the label range check to the call (CUDA), its message, queued on the device here.
    """
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs = log_probs.unsqueeze(1)
        targets = targets.reshape(1, -1)
    input_lengths = input_lengths.reshape(-1)
    target_lengths = target_lengths.reshape(-1)
    targets = _padded_targets(targets, target_lengths).long()
    num_frames, batch, num_classes = log_probs.shape
    width = targets.shape[1]

    # Extended labels: blank at even states, target label at odd ones (blank past the length,
    # so every index is a valid class; those states never reach the end states that are read).
    position = torch.arange(width, device=targets.device)
    labels = torch.where(position < target_lengths.unsqueeze(1), targets, blank)
    if queued_label_error is not None:
        _args.queue_within(labels, 0, num_classes - 1, queued_label_error)
    extended = _interleave(targets.new_full((1, 1), blank), labels)
    # The skip s-2 -> s is allowed into a label state whose label differs from the previous label.
    differs = torch.cat([torch.zeros_like(labels[:, :1], dtype=torch.bool),
                         labels[:, 1:] != labels[:, :-1]], dim=1)
    can_skip = _interleave(torch.zeros((1, 1), dtype=torch.bool, device=targets.device), differs)

    neg_inf = log_probs.new_tensor(-torch.inf)
    # Before the first frame all probability sits on the leading blank state: alpha_0 then comes
    # out of the ordinary recursion (start on the blank, or step to the first label).
    first_state = torch.arange(2 * width + 1, device=log_probs.device) == 0
    alpha = torch.where(first_state, log_probs.new_zeros(()), neg_inf).expand(batch, -1)
    for t in range(num_frames):
        stay = alpha
        step = torch.nn.functional.pad(alpha, (1, 0), value=-torch.inf)[:, :-1]  # from s - 1
        skip = torch.nn.functional.pad(alpha, (2, 0), value=-torch.inf)[:, :-2]  # from s - 2
        skip = torch.where(can_skip, skip, neg_inf)
        emit = log_probs[t].gather(1, extended)
        new_alpha = safe_logsumexp(torch.stack([stay, step, skip]), dim=0) + emit
        alpha = torch.where((t < input_lengths).unsqueeze(1), new_alpha, alpha)  # frozen past the input

    last_blank = alpha.gather(1, (2 * target_lengths).unsqueeze(1)).squeeze(1)
    last_label = alpha.gather(1, (2 * target_lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    last_label = torch.where(target_lengths > 0, last_label, neg_inf)  # an empty target has no label
    loss = -safe_logsumexp(torch.stack([last_blank, last_label]), dim=0)
    if zero_infinity:
        loss = torch.where(torch.isinf(loss), torch.zeros_like(loss), loss)
    if reduction == "mean":  # torch: each loss over its target length, then the batch mean
        loss = loss / target_lengths.clamp(min=1).to(loss.dtype)
    elif unbatched:
        loss = loss.squeeze(0)
    return reduce(loss, reduction)


def ctc_loss_with_logits(logits, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                         zero_infinity=False, queued_label_error=None):
    """ctc_loss on log_softmax(logits) over the class dimension; autograd gives d/d logits."""
    return ctc_loss(torch.log_softmax(logits, dim=-1), targets, input_lengths, target_lengths,
                    blank=blank, reduction=reduction, zero_infinity=zero_infinity,
                    queued_label_error=queued_label_error)
