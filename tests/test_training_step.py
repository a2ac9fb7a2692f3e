"""What a real training step asks of a fused loss beyond its value and gradient: the in-place
option never yields a silently wrong number."""
import pytest
import torch

import fusedloss.functional as F


def _projected_logits():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=generator)
    weight = torch.randn(40, 8, generator=generator, requires_grad=True)
    target = torch.randint(0, 40, (6,), generator=generator)
    return hidden, weight, target


@pytest.mark.parametrize("regulariser_first", [False, True])
def test_logits_used_beside_an_inplace_loss_raise(regulariser_first):
    hidden, weight, target = _projected_logits()
    logits = hidden @ weight.t()
    regulariser = (logits ** 2).mean() if regulariser_first else None
    loss = F.cross_entropy(logits, target, inplace_backward=True)
    if regulariser is None:
        regulariser = (logits ** 2).mean()  # reads the gradient now in the logits' storage
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + regulariser).backward()


def test_inplace_loss_alone_keeps_torchs_gradient():
    hidden, weight, target = _projected_logits()
    loss, lse = F.cross_entropy(hidden @ weight.t(), target, inplace_backward=True,
                                return_lse=True)
    loss.backward()
    expected = weight.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(hidden @ expected.t(), target).backward()
    torch.testing.assert_close(weight.grad, expected.grad)
    torch.testing.assert_close(lse, torch.logsumexp(hidden @ expected.detach().t(), 1))
