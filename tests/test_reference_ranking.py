"""The ranking family's reference: RankNet against hand-worked numbers."""
import math

import pytest
import torch

import fusedloss.functional as F

pytestmark = pytest.mark.usefixtures("reference_backend")


def test_rank_loss_by_hand():
    label = torch.tensor([[1.0], [0.0], [0.5]], dtype=torch.float64)
    left = torch.tensor([[0.3], [2.0], [-1.0]], dtype=torch.float64)
    right = torch.tensor([[0.1], [-1.0], [1.0]], dtype=torch.float64)
    expected = [math.log(1 + math.exp(l - r)) - y * (l - r)
                for y, l, r in zip(label.flatten().tolist(), left.flatten().tolist(), right.flatten().tolist())]
    torch.testing.assert_close(F.rank_loss(label, left, right, reduction="none").flatten(),
                               torch.tensor(expected, dtype=torch.float64))
