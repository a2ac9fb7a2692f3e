"""The cross-entropy family's reference: torch's legacy arguments, unbatched, empty and
all-ignored batches, worked numbers, and the formulas of z-loss, soft-capping and focal loss."""
import math

import pytest
import torch
import torch.nn.functional as TF

import fusedloss.functional as F
from test_reference_twins import assert_same_as_torch

pytestmark = pytest.mark.usefixtures("reference_backend")

REDUCTIONS = ["none", "mean", "sum"]


@pytest.mark.parametrize("size_average,reduce", [(None, False), (False, None), (True, True), (False, True)])
def test_deprecated_size_average_and_reduce(size_average, reduce):
    input, target = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    with pytest.warns(UserWarning):
        ours = F.cross_entropy(input, target, size_average=size_average, reduce=reduce)
    with pytest.warns(UserWarning):
        theirs = TF.cross_entropy(input, target, size_average=size_average, reduce=reduce)
    torch.testing.assert_close(ours, theirs)


def test_unbatched_and_empty_and_all_ignored():
    single = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert_same_as_torch(lambda x: F.cross_entropy(x, torch.tensor(3)),
                 lambda x: TF.cross_entropy(x, torch.tensor(3)), single)
    empty = torch.randn(0, 4, dtype=torch.float64, requires_grad=True)
    for reduction in REDUCTIONS:
        assert_same_as_torch(lambda x: F.cross_entropy(x, torch.zeros(0, dtype=torch.long), reduction=reduction),
                     lambda x: TF.cross_entropy(x, torch.zeros(0, dtype=torch.long), reduction=reduction),
                     empty)
    ignored = torch.full((3,), -100)
    assert math.isnan(F.cross_entropy(torch.randn(3, 4), ignored).item())
    assert math.isnan(TF.cross_entropy(torch.randn(3, 4), ignored).item())


def test_worked_numbers():
    logits = torch.tensor([[0.5796, 0.4403, 0.9087], [-1.5673, -0.3150, 1.6660]])
    assert F.cross_entropy(logits, torch.tensor([0, 2])).item() == pytest.approx(0.6725, abs=5e-5)
    assert F.nll_loss(logits, torch.tensor([0, 2])).item() == pytest.approx(-1.1228, abs=5e-5)
    assert F.cross_entropy(logits, torch.tensor([2, 0])).item() == pytest.approx(2.1246, abs=5e-5)


def test_z_loss_and_softcap_and_lse_by_formula():
    logits = torch.randn(4, 6, dtype=torch.float64) * 5
    target = torch.tensor([0, 5, -100, 2])
    loss, lse = F.cross_entropy(logits, target, z_loss=0.01, softcap=3.0, return_lse=True,
                                reduction="none")
    capped = 3.0 * torch.tanh(logits / 3.0)
    expected_lse = torch.logsumexp(capped, 1)
    kept = target != -100
    expected = (TF.cross_entropy(capped, target, reduction="none") + 0.01 * expected_lse ** 2) * kept
    torch.testing.assert_close(lse, expected_lse)
    torch.testing.assert_close(loss, expected)


def test_softmax_focal_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([1, 2, -100])
    alpha = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    expected = []
    for row, t in zip(logits.tolist(), target.tolist()[:2]):
        p_t = math.exp(row[t]) / sum(math.exp(v) for v in row)
        expected.append(-alpha[t].item() * (1 - p_t) ** 2 * math.log(p_t))
    got = F.softmax_focal_loss(logits, target, alpha=alpha, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected + [0.0], dtype=torch.float64))
    assert F.softmax_focal_loss(logits, target, alpha=alpha).item() == pytest.approx(sum(expected) / 2)
    # gamma = 0 and no alpha is cross entropy
    torch.testing.assert_close(F.softmax_focal_loss(logits, target, gamma=0.0),
                               TF.cross_entropy(logits, target))
