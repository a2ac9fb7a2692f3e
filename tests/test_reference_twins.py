"""The oracle itself, checked against torch.nn.functional in float64: values and input gradients
for every torch twin on every call the fuzzer's strategies draw (every reduction, weights,
ignore_index, soft targets, smoothing, N-d inputs, empty batches), plus the worked numbers of the
seed and formula checks for the losses torch lacks."""
import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

import fusedloss
import fusedloss.functional as F
from fusedloss import catalog
from fusedloss.testing.strategies import calls

REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture(autouse=True)
def reference_backend():
    with fusedloss.use_backend("reference"):
        yield


def _leaf(tensor):
    return tensor.detach().clone().requires_grad_()


def _assert_same(ours_fn, torch_fn, *inputs):
    """Values and gradients of every grad-requiring input agree in float64."""
    ours_inputs = [_leaf(x) if torch.is_tensor(x) and x.requires_grad else x for x in inputs]
    torch_inputs = [_leaf(x) if torch.is_tensor(x) and x.requires_grad else x for x in inputs]
    ours, theirs = ours_fn(*ours_inputs), torch_fn(*torch_inputs)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12, equal_nan=True)
    leaves = [(a, b) for a, b in zip(ours_inputs, torch_inputs) if torch.is_tensor(a) and a.requires_grad]
    if leaves and ours.numel() and torch.isfinite(theirs).all():
        grad_output = torch.rand_like(theirs) + 0.5
        ours_grads = torch.autograd.grad(ours, [a for a, _ in leaves], grad_output, allow_unused=True)
        torch_grads = torch.autograd.grad(theirs, [b for _, b in leaves], grad_output, allow_unused=True)
        for ours_grad, torch_grad in zip(ours_grads, torch_grads):
            if torch_grad is None:
                continue
            torch.testing.assert_close(ours_grad, torch_grad, rtol=1e-9, atol=1e-11)


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
    _assert_same(lambda x: F.cross_entropy(x, torch.tensor(3)),
                 lambda x: TF.cross_entropy(x, torch.tensor(3)), single)
    empty = torch.randn(0, 4, dtype=torch.float64, requires_grad=True)
    for reduction in REDUCTIONS:
        _assert_same(lambda x: F.cross_entropy(x, torch.zeros(0, dtype=torch.long), reduction=reduction),
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


def test_rank_loss_and_dice_by_hand():
    label = torch.tensor([[1.0], [0.0], [0.5]], dtype=torch.float64)
    left = torch.tensor([[0.3], [2.0], [-1.0]], dtype=torch.float64)
    right = torch.tensor([[0.1], [-1.0], [1.0]], dtype=torch.float64)
    expected = [math.log(1 + math.exp(l - r)) - y * (l - r)
                for y, l, r in zip(label.flatten().tolist(), left.flatten().tolist(), right.flatten().tolist())]
    torch.testing.assert_close(F.rank_loss(label, left, right, reduction="none").flatten(),
                               torch.tensor(expected, dtype=torch.float64))

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


@pytest.mark.parametrize("name", [info.name for info in catalog.LOSSES if info.twin])
@settings(max_examples=60)
@given(data=st.data())
def test_reference_equals_torch_on_the_fuzzers_calls(name, data):
    """Every call the fuzzer can draw for a torch twin, in float64: the reference (through the
    public function, so argument handling included) equals torch.nn.functional."""
    info = catalog.get(name)
    call = data.draw(calls(name, dtypes=(torch.float64,)))
    if any(call.kwargs.get(k, default) != default for k, default in info.extras.items()):
        return  # fusedloss-only options: checked by formula below, torch has nothing to say
    kwargs = {k: v for k, v in call.kwargs.items() if k not in info.extras}
    positions = [i for i, a in enumerate(call.args) if torch.is_tensor(a) and a.requires_grad]

    def rebuild(*leaves):
        args = list(call.args)
        for i, leaf in zip(positions, leaves):
            args[i] = leaf
        return args

    leaves = [call.args[i] for i in positions]
    if info.twin_gradient_differs:  # a different quantity (see the catalog)
        leaves, positions = [], []
    _assert_same(lambda *xs: info.function(*rebuild(*xs), **kwargs),
                 lambda *xs: getattr(TF, info.twin)(*rebuild(*xs), **kwargs), *leaves)
