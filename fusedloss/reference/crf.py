"""Linear-chain CRF: the forward algorithm (log-partition), Viterbi and forward-backward marginals.

Shapes are batch-first: emissions (B, T, K), tags and mask (B, T); transitions[i, j] scores the
step from tag i to tag j. The mask (first step on) applies step by step: a step that is off
leaves the recursions' state as it was, and L, the mask's row sum, picks the tag whose end
transition the gold score takes; the formulas are pytorch-crf's, so the two agree exactly.
"""
import torch

from .. import _args
from .._reduction import reduce
from .ctc import safe_logsumexp


def _mask_or_ones(emissions, mask, queued_mask_error):
    """The mask as bool (all on for None); queued_mask_error: where functional.py left the
    first-step check to the call (CUDA), its message, queued on the device here."""
    if mask is None:
        return torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
    if queued_mask_error is not None:
        _args.queue_within(mask[:, 0].to(torch.int8), 1, 1, queued_mask_error)
    return mask.bool()


def _forward_scores(emissions, transitions, start_transitions, mask):
    """alpha[t][b, k]: log-sum of the scores of every path over steps 0..t that ends in tag k.

    Past a sequence's length alpha stays frozen, so the last entry holds each sequence's final alpha.
    """
    alpha = start_transitions + emissions[:, 0]
    alphas = [alpha]
    for t in range(1, emissions.shape[1]):
        # (B, from, to): the path so far, one transition, the emission of the new tag
        step = alpha.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1)
        alpha = torch.where(mask[:, t].unsqueeze(1), safe_logsumexp(step, dim=1), alpha)
        alphas.append(alpha)
    return alphas


def _log_partition(emissions, transitions, start_transitions, end_transitions, mask):
    alpha = _forward_scores(emissions, transitions, start_transitions, mask)[-1]
    return safe_logsumexp(alpha + end_transitions, dim=1)


def _path_score(emissions, tags, transitions, start_transitions, end_transitions, mask):
    """Score of the given tag path: start + emissions + transitions (inside the mask) + end."""
    batch = torch.arange(tags.shape[0], device=tags.device)
    score = start_transitions[tags[:, 0]] + emissions[batch, 0, tags[:, 0]]
    for t in range(1, tags.shape[1]):
        step = transitions[tags[:, t - 1], tags[:, t]] + emissions[batch, t, tags[:, t]]
        score = score + torch.where(mask[:, t], step, 0)  # where, not * mask: -inf * 0 is nan
    last_tags = tags[batch, mask.sum(1) - 1]
    return score + end_transitions[last_tags]


def crf_nll(emissions, tags, transitions, start_transitions, end_transitions, mask=None,
            reduction="mean", queued_mask_error=None, queued_tag_error=None):
    """Per sequence log Z - score(tags); 'mean' averages over the batch ('token_mean' is
    nn.CRF's business: it needs the token count, which a functional 'mean' would hide).
    queued_tag_error: as queued_mask_error (_mask_or_ones), for the tags' range."""
    mask = _mask_or_ones(emissions, mask, queued_mask_error)
    num_tags = emissions.shape[2]
    if queued_tag_error is not None:
        _args.queue_within(_args.crf_tags_read(tags, mask), -num_tags, num_tags - 1,
                           queued_tag_error)
    # in [-K, K) where pytorch-crf reads them, -1 indexing the last tag as there; the score
    # indexes every step, so the ones it never reads are wrapped into range too
    tags = tags.long().remainder(num_tags)
    log_z = _log_partition(emissions, transitions, start_transitions, end_transitions, mask)
    score = _path_score(emissions, tags, transitions, start_transitions, end_transitions, mask)
    return reduce(log_z - score, reduction)


def crf_decode(emissions, transitions, start_transitions, end_transitions, mask=None,
               queued_mask_error=None):
    """Viterbi: (best path score (B,), best tags (B, T) with -1 past each sequence's length).

    Ties go to the lowest tag index (torch.max), as in pytorch-crf.
    """
    mask = _mask_or_ones(emissions, mask, queued_mask_error)
    batch_size, num_steps, _ = emissions.shape
    score = start_transitions + emissions[:, 0]
    backpointers = []  # backpointers[t - 1][b, k]: best previous tag when step t has tag k
    for t in range(1, num_steps):
        step = score.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1)
        best, previous = step.max(dim=1)
        score = torch.where(mask[:, t].unsqueeze(1), best, score)
        backpointers.append(previous)
    best_scores, tag = (score + end_transitions).max(dim=1)

    lengths = mask.sum(1)
    best_tags = torch.full((batch_size, num_steps), -1, dtype=torch.long, device=emissions.device)
    for t in reversed(range(num_steps)):
        if t + 1 < num_steps:  # follow the backpointer only inside the sequence
            previous = backpointers[t].gather(1, tag.unsqueeze(1)).squeeze(1)
            tag = torch.where(t + 1 < lengths, previous, tag)
        best_tags[:, t] = torch.where(t < lengths, tag, -1)
    return best_scores, best_tags


def crf_marginals(emissions, transitions, start_transitions, end_transitions, mask=None,
                  queued_mask_error=None):
    """P(tag at step t = k | emissions) by forward-backward, (B, T, K); zero where the mask is off."""
    mask = _mask_or_ones(emissions, mask, queued_mask_error)
    alphas = _forward_scores(emissions, transitions, start_transitions, mask)
    # beta[t][b, k]: log-sum of the scores of every continuation after step t given tag k there,
    # end transition included; a step that is off passes beta on unchanged, as alpha.
    beta = end_transitions.expand_as(alphas[-1])
    betas = [beta]
    for t in reversed(range(emissions.shape[1] - 1)):
        step = transitions + (emissions[:, t + 1] + beta).unsqueeze(1)  # (B, from, to)
        beta = torch.where(mask[:, t + 1].unsqueeze(1), safe_logsumexp(step, dim=2), beta)
        betas.append(beta)
    betas.reverse()
    log_z = safe_logsumexp(alphas[-1] + end_transitions, dim=1)
    log_marginals = torch.stack(alphas, 1) + torch.stack(betas, 1) - log_z[:, None, None]
    return torch.exp(log_marginals) * mask.unsqueeze(2)
