"""fusedloss.nn's sequence-loss modules: CTCLoss against torch, HSigmoidLoss and NCELoss."""
import math

import pytest
import torch

import fusedloss.nn


def test_ctc_module_matches_torch():
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(6, 2, 4, generator=generator).log_softmax(-1)
    args = (log_probs, torch.tensor([[1, 2], [3, 3]]), [6, 5], [2, 2])
    for kwargs in ({}, {"reduction": "sum"}, {"blank": 3, "zero_infinity": True}):
        torch.testing.assert_close(fusedloss.nn.CTCLoss(**kwargs)(*args), torch.nn.CTCLoss(**kwargs)(*args))


@pytest.mark.parametrize("is_custom", [False, True])
def test_hsigmoid_module_forward_backward(is_custom):
    torch.manual_seed(0)
    module = fusedloss.nn.HSigmoidLoss(3, 6, is_custom=is_custom)
    num_nodes = 6 if is_custom else 5
    assert module.weight.shape == (num_nodes, 3) and module.bias.shape == (num_nodes,)
    x, label = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 5, 2, 3])
    paths = (torch.tensor([[0, 5, -1]] * 4), torch.tensor([[1, 0, -1]] * 4)) if is_custom else ()
    module(x, label, *paths).backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, module.weight, module.bias))
    assert fusedloss.nn.HSigmoidLoss(3, 6, bias=False).bias is None


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform", "custom"])
def test_nce_module_samplers_and_forward_backward(sampler):
    torch.manual_seed(0)
    if sampler == "custom":
        sampler = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    module = fusedloss.nn.NCELoss(8, 3, num_neg_samples=5, sampler=sampler)
    probs = module.noise_log_probs.exp()
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    if isinstance(sampler, str) and sampler == "log_uniform":  # Zipf: log((c + 2) / (c + 1)) / log(C + 1)
        assert probs[0].item() == pytest.approx(math.log(2) / math.log(9), rel=1e-6)
        assert (probs[:-1] > probs[1:]).all()
    x = torch.randn(6, 3, requires_grad=True)
    loss = module(x, torch.randint(0, 8, (6,)))
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss)
    assert all(torch.isfinite(t.grad).all() for t in (x, module.weight, module.bias))
    with pytest.raises(ValueError):
        fusedloss.nn.NCELoss(8, 3, sampler="zipf")


@pytest.mark.parametrize("out_features,bias", [((), False), ((3,), True), ((2, 2), False)])
def test_linear_cross_entropy_module_k_dimensional(out_features, bias):
    """Same parameters (state_dict keys and flat storage) and the same loss and gradients as
    torch's module, or on torch without one as its definition: cross entropy of the reshaped
    linear layer's logits, classes on dim 1."""
    torch.manual_seed(0)
    module = fusedloss.nn.LinearCrossEntropyLoss(4, 5, out_features=out_features, bias=bias,
                                                 dtype=torch.float64)
    assert module.linear.weight.shape == (5 * math.prod(out_features), 4)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (6, *out_features))
    loss = module(x, target)
    if hasattr(torch.nn, "LinearCrossEntropyLoss"):
        twin = torch.nn.LinearCrossEntropyLoss(4, 5, out_features=out_features, bias=bias,
                                               dtype=torch.float64)
        twin.load_state_dict(module.state_dict())
        expected = twin(x, target)
        parameters = list(twin.parameters())
    else:
        logits = module.linear(x).reshape(6, 5, *out_features)
        expected = torch.nn.functional.cross_entropy(logits, target)
        parameters = list(module.parameters())
    torch.testing.assert_close(loss, expected)
    ours = torch.autograd.grad(loss, [x, *module.parameters()])
    theirs = torch.autograd.grad(expected, [x, *parameters])
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want)
