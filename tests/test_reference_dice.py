"""dice_loss's reference against hand-worked per-sample overlaps."""
import pytest
import torch

import fusedloss.functional as F

pytestmark = pytest.mark.usefixtures("reference_backend")


def test_dice_loss_by_hand():
    probs = torch.tensor([[[0.7, 0.3], [0.4, 0.6]], [[0.1, 0.9], [0.5, 0.5]]], dtype=torch.float64)
    labels = torch.tensor([[[0], [1]], [[1], [1]]])
    per_sample = []
    for sample, sample_labels in zip(probs.tolist(), labels.tolist()):
        intersection = sum(row[lab[0]] for row, lab in zip(sample, sample_labels))
        total = sum(map(sum, sample)) + len(sample)  # |X| + |Y| (one 1 per position)
        per_sample.append(1 - 2 * intersection / (total + 1e-5))
    torch.testing.assert_close(F.dice_loss(probs, labels, reduction="none"),
                               torch.tensor(per_sample, dtype=torch.float64))
    assert F.dice_loss(probs, labels).item() == pytest.approx(sum(per_sample) / 2)
