"""NCE against hand-worked numbers, large logits and its argument errors."""
import math

import pytest
import torch

import fusedloss.functional as F
from fusedloss.reference.nce import nce_loss


def test_nce_hand_worked_numbers():
    x = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    weight = torch.tensor([[0.2, 0.1], [-0.3, 0.4], [0.5, 0.5]], dtype=torch.float64)
    bias = torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)
    noise_log_probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    # s = [0.25, -0.7, 0.25], o = sigmoid(s) (Fluid), b = k * q = [1.0, 0.6, 0.4] with k = 2
    # negatives (classes 1 and 2)
    o_true, o_1, o_2 = 1 / (1 + math.exp(-0.25)), 1 / (1 + math.exp(0.7)), 1 / (1 + math.exp(-0.25))
    by_hand = (-math.log(o_true / (o_true + 1.0)) - math.log(0.6 / (o_1 + 0.6))
               - math.log(0.4 / (o_2 + 0.4)))
    assert by_hand == pytest.approx(2.33995, abs=1e-5)
    loss = F.nce_loss(x, torch.tensor([0]), weight, bias, torch.tensor([[1, 2]]), noise_log_probs,
                      reduction="none")
    torch.testing.assert_close(loss, torch.tensor([by_hand], dtype=torch.float64))


def test_nce_is_stable_for_large_logits_and_reduces_over_samples():
    generator = torch.Generator().manual_seed(0)
    x = (100 * torch.randn(4, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    noise = torch.randint(0, 6, (4, 5), generator=generator)
    log_q = torch.full((6,), -math.log(6), dtype=torch.float64)
    per_sample = nce_loss(x, torch.tensor([[0], [1], [2], [3]]), weight, None, noise, log_q, "none")
    assert torch.isfinite(per_sample).all()
    (grad,) = torch.autograd.grad(per_sample.sum(), x)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(nce_loss(x, torch.arange(4), weight, None, noise, log_q), per_sample.mean())
    summed = nce_loss(x, torch.arange(4), weight, None, noise, log_q, "sum")
    torch.testing.assert_close(summed, per_sample.sum())


def test_nce_errors():
    x, weight, bias = torch.randn(2, 3), torch.randn(4, 3), torch.randn(4)
    log_q = torch.full((4,), -math.log(4))
    noise = torch.tensor([[1, 2], [3, 0]])
    with pytest.raises(IndexError):
        F.nce_loss(x, torch.tensor([0, 4]), weight, bias, noise, log_q)
    with pytest.raises(IndexError):
        F.nce_loss(x, torch.tensor([0, 1]), weight, bias, noise + 2, log_q)
    with pytest.raises(ValueError):
        F.nce_loss(x, torch.tensor([0, 1]), weight, bias, noise, log_q[:3])
    with pytest.raises(ValueError):
        F.nce_loss(x, torch.tensor([0, 1, 2]), weight, bias, noise, log_q)
