"""The binary family's reference: sigmoid focal loss equals torchvision's formula."""
import pytest
import torch
import torch.nn.functional as TF

import fusedloss.functional as F

pytestmark = pytest.mark.usefixtures("reference_backend")


def test_sigmoid_focal_loss_equals_torchvision_formula():
    logits = torch.randn(5, 4, dtype=torch.float64) * 4
    targets = (torch.rand(5, 4) < 0.3).double()
    for alpha, gamma in [(0.25, 2.0), (-1.0, 0.0), (0.7, 1.5)]:
        p = torch.sigmoid(logits)
        ce = TF.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        expected = ce * (1 - p_t) ** gamma
        if alpha >= 0:
            expected = expected * (alpha * targets + (1 - alpha) * (1 - targets))
        torch.testing.assert_close(F.sigmoid_focal_loss(logits, targets, alpha, gamma), expected)
        torch.testing.assert_close(F.sigmoid_focal_loss(logits, targets, alpha, gamma, "mean"),
                                   expected.mean())
