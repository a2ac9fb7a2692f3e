"""The CTC reference against torch's ctc_loss and against brute-force enumeration of alignments."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

import fusedloss.functional as F
from fusedloss.reference.ctc import ctc_loss, ctc_loss_with_logits


def _collapse(path, blank):
    """CTC's many-to-one map: merge repeated symbols, then drop blanks."""
    return [s for s, _ in itertools.groupby(path) if s != blank]


def _brute_force_nll(log_probs, target, blank):
    """-log of the summed probability of every length-T path that collapses to `target`."""
    num_frames, num_classes = log_probs.shape
    total = 0.0
    for path in itertools.product(range(num_classes), repeat=num_frames):
        if _collapse(path, blank) == list(target):
            total += math.exp(sum(log_probs[t, s].item() for t, s in enumerate(path)))
    return math.inf if total == 0 else -math.log(total)


@st.composite
def _tiny_cases(draw):
    num_classes = draw(st.integers(2, 4))
    blank = draw(st.integers(0, num_classes - 1))
    labels = [c for c in range(num_classes) if c != blank]
    batch = draw(st.integers(1, 3))
    frames = draw(st.integers(1, 5))
    input_lengths = [draw(st.integers(0, frames)) for _ in range(batch)]
    # up to 4 labels, repeats likely: some targets are too long for their input (infeasible)
    targets = [draw(st.lists(st.sampled_from(labels), max_size=4)) for _ in range(batch)]
    seed = draw(st.integers(0, 2**16))
    return frames, num_classes, blank, input_lengths, targets, seed


@settings(max_examples=40, deadline=None)
@given(_tiny_cases())
def test_matches_brute_force_enumeration(case):
    frames, num_classes, blank, input_lengths, targets, seed = case
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(frames, len(targets), num_classes, generator=generator,
                            dtype=torch.float64).log_softmax(-1)
    width = max(1, max(map(len, targets)))
    padded = torch.tensor([t + [blank] * (width - len(t)) for t in targets])
    loss = ctc_loss(log_probs, padded, torch.tensor(input_lengths),
                    torch.tensor([len(t) for t in targets]), blank=blank, reduction="none")
    for b, target in enumerate(targets):
        expected = _brute_force_nll(log_probs[: input_lengths[b], b], target, blank)
        if math.isinf(expected):
            assert math.isinf(loss[b].item()) and loss[b].item() > 0
        else:
            assert loss[b].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def _batch(seed=0, frames=8, batch=4, num_classes=5, width=4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, batch, num_classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(1, num_classes, (batch, width), generator=generator)
    targets[0, :2] = 3  # a repeated label: needs a blank in between
    input_lengths = torch.tensor([frames, frames - 1, 3, frames][:batch])
    target_lengths = torch.tensor([width, 2, 3, 0][:batch])  # entry 3: empty target
    targets[2, :3] = 2  # entry 2 is infeasible: 3 frames cannot spell 2 2 2 (it needs 5)
    return logits.requires_grad_(), targets, input_lengths, target_lengths


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("concatenated", [False, True])
def test_matches_torch_values_and_gradients(reduction, zero_infinity, concatenated):
    logits, targets, input_lengths, target_lengths = _batch()
    if concatenated:
        targets = torch.cat([row[:n] for row, n in zip(targets, target_lengths)])
    expected = TF.ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths,
                           reduction=reduction, zero_infinity=zero_infinity)
    actual = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths,
                      reduction=reduction, zero_infinity=zero_infinity)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    if zero_infinity:  # torch's gradient of an infinite loss is nan; compare where it is defined
        # gradients through log_softmax: torch's native backward is only right up to that (see ctc.py)
        (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
        (actual_grad,) = torch.autograd.grad(actual.sum(), logits)
        torch.testing.assert_close(actual_grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_feasible_gradients_match_torch_without_zero_infinity():
    logits, targets, input_lengths, target_lengths = _batch()
    keep = [0, 1, 3]  # drop the infeasible entry
    args = (targets[keep], input_lengths[keep], target_lengths[keep])
    for reduction in ("none", "sum", "mean"):
        expected = TF.ctc_loss(logits[:, keep].log_softmax(-1), *args, reduction=reduction)
        actual = ctc_loss(logits[:, keep].log_softmax(-1), *args, reduction=reduction)
        (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
        (actual_grad,) = torch.autograd.grad(actual.sum(), logits)
        torch.testing.assert_close(actual_grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_infinite_loss_and_zero_infinity():
    logits, targets, input_lengths, target_lengths = _batch()
    loss = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths, reduction="none")
    assert torch.isinf(loss[2]) and torch.isfinite(loss[[0, 1, 3]]).all()
    zeroed = ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths,
                      reduction="sum", zero_infinity=True)
    (grad,) = torch.autograd.grad(zeroed, logits)
    assert torch.isfinite(grad).all() and grad[:, 2].abs().max() == 0


def test_unbatched_matches_torch():
    logits, targets, input_lengths, target_lengths = _batch()
    log_probs = logits[:, 0].log_softmax(-1)
    for lengths in ((input_lengths[0], target_lengths[0]), ([int(input_lengths[0])], [int(target_lengths[0])])):
        for reduction in ("none", "sum", "mean"):
            expected = TF.ctc_loss(log_probs, targets[0], *lengths, reduction=reduction)
            actual = F.ctc_loss(log_probs, targets[0], *lengths, reduction=reduction)
            assert actual.shape == expected.shape == ()
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_blank_not_zero_and_label_equal_to_blank_match_torch():
    logits, targets, input_lengths, target_lengths = _batch()
    for blank, label_targets in ((4, targets.clamp(max=3)), (0, targets.where(targets != 2, 0))):
        expected = TF.ctc_loss(logits.log_softmax(-1), label_targets, input_lengths,
                               target_lengths, blank=blank, reduction="none")
        actual = ctc_loss(logits.log_softmax(-1), label_targets, input_lengths, target_lengths,
                          blank=blank, reduction="none")
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_with_logits_gradient_matches_autograd_through_log_softmax():
    logits, targets, input_lengths, target_lengths = _batch()
    expected = TF.ctc_loss(logits.log_softmax(-1), targets, input_lengths, target_lengths,
                           zero_infinity=True)
    actual = ctc_loss_with_logits(logits, targets, input_lengths, target_lengths, zero_infinity=True)
    public = F.ctc_loss_with_logits(logits, targets, input_lengths.tolist(), target_lengths.tolist(),
                                    zero_infinity=True)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(public, expected, rtol=1e-10, atol=1e-12)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    (actual_grad,) = torch.autograd.grad(actual, logits)
    torch.testing.assert_close(actual_grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_public_function_accepts_lists_tuples_and_int32():
    logits, targets, input_lengths, target_lengths = _batch()
    log_probs = logits.detach().log_softmax(-1)
    expected = TF.ctc_loss(log_probs, targets, input_lengths, target_lengths)
    for lengths in ((input_lengths.tolist(), target_lengths.tolist()),
                    (tuple(input_lengths.tolist()), tuple(target_lengths.tolist())),
                    (input_lengths.int(), target_lengths.int())):
        torch.testing.assert_close(F.ctc_loss(log_probs, targets.int(), *lengths), expected)


def _bad_calls():
    log_probs = torch.randn(5, 2, 4, dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[1, 2, 3], [3, 2, 1]])
    ok = ([5, 4], [3, 2])
    return {
        "negative input length": (log_probs, targets, [5, -1], [3, 2]),
        "negative target length": (log_probs, targets, [5, 4], [3, -2]),
        "input length > T": (log_probs, targets, [6, 4], [3, 2]),
        "target length > S": (log_probs, targets, [5, 4], [4, 2]),
        "concatenated size": (log_probs, targets.flatten(), [5, 4], [3, 2]),
        "batch mismatch": (log_probs, targets[:1], *ok),
        "3-d targets": (log_probs, targets.unsqueeze(0), *ok),
        "4-d log_probs": (log_probs.unsqueeze(0), targets, *ok),
        "1-d log_probs": (log_probs[:, 0, 0], targets, *ok),
        "lengths count": (log_probs, targets, [5, 4, 3], [3, 2]),
        "float lengths": (log_probs, targets, torch.tensor([5.0, 4.0]), [3, 2]),
        "int lengths": (log_probs, targets, 5, 3),
        "integer log_probs": (log_probs.long(), targets, *ok),
        "empty": (log_probs[:, :0], targets[:0], [], []),
    }


@pytest.mark.parametrize("name", sorted(_bad_calls()))
def test_errors_match_torch(name):
    args = _bad_calls()[name]
    with pytest.raises(Exception) as torch_error:
        TF.ctc_loss(*args)
    with pytest.raises(type(torch_error.value)):
        F.ctc_loss(*args)


@pytest.mark.parametrize("kwargs, error", [({"blank": 4}, RuntimeError), ({"blank": -1}, RuntimeError),
                                           ({"reduction": "avg"}, ValueError)])
def test_blank_and_reduction_errors(kwargs, error):
    log_probs = torch.randn(5, 2, 4).log_softmax(-1)
    args = (log_probs, torch.tensor([[1, 2], [3, 1]]), [5, 4], [2, 2])
    with pytest.raises(error):
        TF.ctc_loss(*args, **kwargs)
    with pytest.raises(error):
        F.ctc_loss(*args, **kwargs)


def test_label_out_of_range_is_an_index_error():
    log_probs = torch.randn(5, 1, 4).log_softmax(-1)
    with pytest.raises(IndexError):
        F.ctc_loss(log_probs, torch.tensor([[1, 4]]), [5], [2])
    # padding past a target's length is never read, so any value is fine there
    F.ctc_loss(log_probs, torch.tensor([[1, -1]]), [5], [1])
