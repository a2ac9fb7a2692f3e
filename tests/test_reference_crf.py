"""The CRF reference against brute-force enumeration of tag paths and against pytorch-crf."""
import itertools
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fusedloss.functional as F
from fusedloss.nn import CRF
from fusedloss.reference.crf import crf_decode, crf_marginals, crf_nll


def _path_score(emissions, path, transitions, start, end):
    score = start[path[0]] + end[path[-1]]
    score = score + sum(emissions[t, tag] for t, tag in enumerate(path))
    return score + sum(transitions[a, b] for a, b in zip(path, path[1:]))


def _all_paths(emissions, length, transitions, start, end):
    """{path: score} for every tag path over the first `length` steps of one sequence."""
    num_tags = emissions.shape[1]
    return {path: _path_score(emissions, path, transitions, start, end)
            for path in itertools.product(range(num_tags), repeat=length)}


def _random_crf(seed, batch, steps, num_tags, lengths):
    generator = torch.Generator().manual_seed(seed)
    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)
    emissions, transitions = rand(batch, steps, num_tags), rand(num_tags, num_tags)
    start, end = rand(num_tags), rand(num_tags)
    tags = torch.randint(0, num_tags, (batch, steps), generator=generator)
    mask = torch.arange(steps) < torch.tensor(lengths).unsqueeze(1)
    return emissions, tags, transitions, start, end, mask


@st.composite
def _tiny_cases(draw):
    num_tags = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, steps), min_size=1, max_size=3))
    return draw(st.integers(0, 2**16)), len(lengths), steps, num_tags, lengths


@settings(max_examples=30, deadline=None)
@given(_tiny_cases())
def test_matches_brute_force_enumeration(case):
    seed, batch, steps, num_tags, lengths = case
    emissions, tags, transitions, start, end, mask = _random_crf(*case)
    nll = crf_nll(emissions, tags, transitions, start, end, mask, reduction="none")
    best_scores, best_tags = crf_decode(emissions, transitions, start, end, mask)
    marginals = crf_marginals(emissions, transitions, start, end, mask)
    for b, length in enumerate(lengths):
        paths = _all_paths(emissions[b], length, transitions, start, end)
        scores = torch.stack(list(paths.values()))
        log_z = torch.logsumexp(scores, 0)
        gold = tuple(tags[b, :length].tolist())
        torch.testing.assert_close(nll[b], log_z - paths[gold], rtol=1e-10, atol=1e-10)

        best = max(paths, key=lambda path: paths[path].item())
        assert best_tags[b].tolist() == list(best) + [-1] * (steps - length)
        torch.testing.assert_close(best_scores[b], paths[best], rtol=1e-10, atol=1e-10)

        expected = torch.zeros(steps, num_tags, dtype=torch.float64)
        for path, score in paths.items():
            for t, tag in enumerate(path):
                expected[t, tag] += torch.exp(score - log_z)
        torch.testing.assert_close(marginals[b], expected, rtol=1e-9, atol=1e-10)


def test_reductions_and_default_mask():
    emissions, tags, transitions, start, end, _ = _random_crf(0, 3, 4, 3, [4, 4, 4])
    per_sequence = crf_nll(emissions, tags, transitions, start, end, reduction="none")
    summed = crf_nll(emissions, tags, transitions, start, end, reduction="sum")
    torch.testing.assert_close(summed, per_sequence.sum())
    torch.testing.assert_close(F.crf_nll(emissions, tags, transitions, start, end), per_sequence.mean())
    ones = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(F.crf_nll(emissions, tags, transitions, start, end, ones, "none"), per_sequence)


def test_tags_past_the_length_are_ignored():
    emissions, tags, transitions, start, end, mask = _random_crf(0, 3, 4, 3, [4, 2, 3])
    expected = F.crf_nll(emissions, tags, transitions, start, end, mask, "none")
    padded = tags.masked_fill(~mask, -1)
    torch.testing.assert_close(F.crf_nll(emissions, padded, transitions, start, end, mask, "none"), expected)
    # without a mask every tag is read, and -1 is the last tag (pytorch-crf's indexing wraps it)
    wrapped = tags.masked_fill(~mask, 2)
    torch.testing.assert_close(F.crf_nll(emissions, padded, transitions, start, end),
                               F.crf_nll(emissions, wrapped, transitions, start, end))
    with pytest.raises(IndexError):
        F.crf_nll(emissions, tags.masked_fill(~mask, -4), transitions, start, end)


def _pair(torchcrf, num_tags, batch_first, seed=0):
    torch.manual_seed(seed)
    theirs = torchcrf.CRF(num_tags, batch_first=batch_first).double()
    ours = CRF(num_tags, batch_first=batch_first).double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


# masks pytorch-crf accepts: none, prefixes, and steps off between steps on (applied step by step)
HOLES = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [1, 1, 0, 0, 1]], dtype=torch.bool)


@pytest.mark.filterwarnings("ignore:where received a uint8")  # inside pytorch-crf
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("reduction,mask_kind", [
    *[(reduction, kind) for reduction in ("none", "sum", "mean", "token_mean")
      for kind in ("none", "prefix")],
    ("token_mean", "holes")])  # holes: the one reduction that reads the mask
def test_module_matches_pytorch_crf(batch_first, reduction, mask_kind, torchcrf):
    ours, theirs = _pair(torchcrf, 4, batch_first)
    emissions, tags, *_, mask = _random_crf(1, 3, 5, 4, [5, 2, 3])
    if mask_kind == "holes":  # tags off the mask are -1: pytorch-crf reads some (as the last tag)
        mask = HOLES
        tags = tags.masked_fill(~mask, -1)
    emissions.requires_grad_()
    if not batch_first:
        emissions, tags, mask = emissions.transpose(0, 1), tags.transpose(0, 1), mask.transpose(0, 1)
    mask = None if mask_kind == "none" else mask.to(torch.uint8)
    expected = theirs(emissions, tags, mask=mask, reduction=reduction)
    actual = ours(emissions, tags, mask=mask, reduction=reduction)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    expected_grads = torch.autograd.grad(expected.sum(), [emissions, *theirs.parameters()])
    actual_grads = torch.autograd.grad(actual.sum(), [emissions, *ours.parameters()])
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)
    assert ours.decode(emissions, mask=mask) == theirs.decode(emissions, mask=mask)


def test_reference_holes_match_brute_force():
    # a mask with holes is the chain over the steps that are on (the gold score aside, whose
    # transitions and end read pytorch-crf's tags[t-1] and tags[L-1]): log Z and marginals
    emissions, _, transitions, start, end, _ = _random_crf(2, 3, 5, 3, [5, 5, 5])
    for b in range(3):
        on = HOLES[b].nonzero().squeeze(1)
        paths = _all_paths(emissions[b, on], len(on), transitions, start, end)
        scores = torch.stack(list(paths.values()))
        log_z = torch.logsumexp(scores, 0)
        zeros = torch.zeros(1, 5, dtype=torch.long)
        torch.testing.assert_close(crf_nll(emissions[b:b + 1], zeros, transitions, start, end,
                                           HOLES[b:b + 1], "sum")
                                   + _pytorch_crf_gold(emissions[b], zeros[0], transitions, start,
                                                       end, HOLES[b]), log_z)
        weights = torch.softmax(scores, 0)
        marginals = torch.zeros(5, 3, dtype=torch.float64)
        for weight, path in zip(weights, paths):
            marginals[on, list(path)] += weight
        torch.testing.assert_close(crf_marginals(emissions[b:b + 1], transitions, start, end,
                                                 HOLES[b:b + 1])[0], marginals)


def _pytorch_crf_gold(emissions, tags, transitions, start, end, mask):
    """pytorch-crf's gold score of one sequence, written out step by step."""
    score = start[tags[0]] + emissions[0, tags[0]]
    for t in range(1, len(tags)):
        if mask[t]:
            score = score + transitions[tags[t - 1], tags[t]] + emissions[t, tags[t]]
    return score + end[tags[int(mask.sum()) - 1]]


@pytest.mark.parametrize("batch_first", [False, True])
def test_module_errors_match_pytorch_crf(batch_first, torchcrf):
    ours, theirs = _pair(torchcrf, 4, batch_first)
    emissions, tags, *_, mask = _random_crf(1, 3, 5, 4, [5, 2, 3])
    if not batch_first:  # the caller's layout: the messages name these shapes
        emissions, tags, mask = emissions.transpose(0, 1), tags.transpose(0, 1), mask.transpose(0, 1)
    late_start = mask.clone()
    late_start[(1, 0) if batch_first else (0, 1)] = False
    calls = [lambda crf: crf(emissions[0], tags),
             lambda crf: crf(emissions[..., :3], tags),  # a wrong tag count
             lambda crf: crf(emissions, tags[:, :2]),
             lambda crf: crf(emissions, tags, mask=mask[:2]),
             lambda crf: crf(emissions, tags, mask=late_start),
             lambda crf: crf.decode(emissions[..., :3]),
             lambda crf: crf.decode(emissions, mask=late_start)]
    for call in calls:
        with pytest.raises(ValueError) as expected:
            call(theirs)
        with pytest.raises(ValueError, match="^" + re.escape(str(expected.value)) + "$"):
            call(ours)


def test_module_parameters_and_init():
    crf = CRF(5)
    names = {name for name, _ in crf.named_parameters()}
    assert names == {"transitions", "start_transitions", "end_transitions"}
    assert crf.transitions.shape == (5, 5) and crf.start_transitions.shape == crf.end_transitions.shape == (5,)
    assert all(p.abs().max() <= 0.1 for p in crf.parameters())
    assert repr(crf) == "CRF(num_tags=5)"


def test_errors():
    emissions, tags, transitions, start, end, mask = _random_crf(0, 2, 3, 3, [3, 2])
    args = (transitions, start, end)
    late_start = mask.clone()
    late_start[1, 0] = False
    with pytest.raises(ValueError, match="first timestep"):
        F.crf_nll(emissions, tags, *args, mask=late_start)
    with pytest.raises(ValueError, match="first timestep"):
        F.crf_decode(emissions, *args, mask=late_start)
    with pytest.raises(ValueError):
        F.crf_nll(emissions, tags[:, :2], *args)
    with pytest.raises(ValueError):
        F.crf_nll(emissions, tags, *args, mask=mask[:, :2])
    with pytest.raises(ValueError):
        F.crf_nll(emissions[0], tags, *args)
    with pytest.raises(ValueError):
        F.crf_nll(emissions, tags, transitions[:2], start, end)
    with pytest.raises(ValueError):
        F.crf_marginals(emissions, transitions, start[:2], end)
    with pytest.raises(IndexError):
        F.crf_nll(emissions, tags + 3, *args)
    with pytest.raises(ValueError):
        F.crf_nll(emissions, tags, *args, reduction="token_mean")  # nn.CRF's business only
    with pytest.raises(ValueError):
        CRF(3)(emissions, tags, reduction="avg")
    with pytest.raises(ValueError):
        CRF(0)
    with pytest.raises(ValueError):  # the time-major module checks the mask's first step too
        CRF(3)(emissions.transpose(0, 1), tags.transpose(0, 1), mask=late_start.transpose(0, 1))
