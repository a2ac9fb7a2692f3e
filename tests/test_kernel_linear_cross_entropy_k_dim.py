"""linear_cross_entropy with torch 2.13's K-dimensional classifier, linear_weight
(C, d1, ..., dk, H): one (C, H) classifier per position, each through the kernel entry."""
import pytest
import torch

import fusedloss.functional as F
from fusedloss import reference
from fusedloss.testing.twins import torch_function


@pytest.mark.parametrize("soft,reduction", [(False, "mean"), (True, "none")])
def test_k_dimensional_linear_cross_entropy_runs_the_kernels(soft, reduction, monkeypatch):
    """torch 2.13's classifier (C, d1, d2, H): torch's values and gradients (2.11: the same
    composition), with the reference unreachable, so the kernel entry computed them."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 2, 2, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    if soft:
        target = torch.randn(3, 5, 2, 2, generator=generator, dtype=torch.float64).softmax(1)
    else:
        target = torch.randint(0, 5, (3, 2, 2), generator=generator)
        target[0, 1, 0] = -100
    kwargs = dict(linear_bias=b, weight=torch.rand(5, generator=generator, dtype=torch.float64),
                  reduction=reduction, label_smoothing=0.1)
    expected = torch_function("linear_cross_entropy")(x, w, target, **kwargs)
    expected_grads = torch.autograd.grad(expected.sum(), (x, w, b))

    def unreachable(*args, **kwargs):
        raise AssertionError("the reference ran")
    monkeypatch.setattr(reference, "linear_cross_entropy", unreachable)
    loss = F.linear_cross_entropy(x, w, target, **kwargs)
    torch.testing.assert_close(loss, expected)
    for ours, theirs in zip(torch.autograd.grad(loss.sum(), (x, w, b)), expected_grads):
        torch.testing.assert_close(ours, theirs)
