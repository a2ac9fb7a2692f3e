"""The oracle itself, checked against torch.nn.functional in float64: values and input gradients
for every torch twin, every reduction, weights, ignore_index, soft targets, smoothing, N-d inputs
and empty batches; plus the worked numbers of the seed and formula checks for the losses torch
lacks."""
import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, strategies as st

import fusedloss
import fusedloss.functional as F

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


@st.composite
def classification_cases(draw):
    batch = draw(st.integers(0, 5))
    classes = draw(st.integers(1, 7))
    extra = draw(st.lists(st.integers(1, 3), max_size=2))
    shape = (batch, classes, *extra)
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    input = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, classes, (batch, *extra), generator=generator)
    ignore_index = draw(st.sampled_from([-100, 0]))
    target = torch.where(torch.rand(target.shape, generator=generator) < 0.2, ignore_index, target)
    weight = draw(st.sampled_from([None, "weight"]))
    if weight:
        weight = torch.rand(classes, generator=generator, dtype=torch.float64) + 0.1
    return input, target, weight, ignore_index, draw(st.sampled_from(REDUCTIONS))


@given(classification_cases(), st.sampled_from([0.0, 0.1, 1.0]))
def test_cross_entropy_hard_labels(case, label_smoothing):
    input, target, weight, ignore_index, reduction = case
    options = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing)
    _assert_same(lambda x: F.cross_entropy(x, target, **options),
                 lambda x: TF.cross_entropy(x, target, **options), input)


@given(classification_cases(), st.sampled_from([0.0, 0.3]))
def test_cross_entropy_soft_labels(case, label_smoothing):
    input, _, weight, _, reduction = case
    probs = torch.softmax(torch.randn(input.shape, dtype=torch.float64), 1).requires_grad_()
    options = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    _assert_same(lambda x, p: F.cross_entropy(x, p, **options),
                 lambda x, p: TF.cross_entropy(x, p, **options), input, probs)


@given(classification_cases())
def test_nll_loss(case):
    input, target, weight, ignore_index, reduction = case
    options = dict(weight=weight, ignore_index=ignore_index, reduction=reduction)
    _assert_same(lambda x: F.nll_loss(x, target, **options),
                 lambda x: TF.nll_loss(x, target, **options), input)


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


@given(classification_cases(), st.sampled_from([0.0, 0.2]))
def test_linear_cross_entropy(case, label_smoothing):
    input, target, weight, ignore_index, reduction = case
    input = input.flatten(2)[..., 0] if input.dim() > 2 else input
    target = target.flatten(1)[:, 0] if target.dim() > 1 else target
    hidden = torch.randn(input.shape[0], 3, dtype=torch.float64, requires_grad=True)
    linear_weight = torch.randn(input.shape[1], 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(input.shape[1], dtype=torch.float64, requires_grad=True)
    options = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, linear_bias=bias)
    _assert_same(lambda h, w: F.linear_cross_entropy(h, w, target, **options),
                 lambda h, w: TF.linear_cross_entropy(h, w, target, **options), hidden, linear_weight)


@st.composite
def pointwise_cases(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    input = (torch.randn(shape, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    target = (torch.randn(shape, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    weight = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.1
    return input, target, weight, draw(st.sampled_from(REDUCTIONS))


@given(pointwise_cases(), st.sampled_from(["l1_loss", "mse_loss", "huber_loss"]), st.booleans())
def test_regression_losses(case, name, weighted):
    input, target, weight, reduction = case
    options = dict(reduction=reduction, weight=weight if weighted else None)
    _assert_same(lambda x, y: getattr(F, name)(x, y, **options),
                 lambda x, y: getattr(TF, name)(x, y, **options), input, target)


@given(pointwise_cases(), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_smooth_l1_and_huber_parameters(case, parameter):
    input, target, _, reduction = case
    _assert_same(lambda x, y: F.smooth_l1_loss(x, y, reduction=reduction, beta=parameter),
                 lambda x, y: TF.smooth_l1_loss(x, y, reduction=reduction, beta=parameter), input, target)
    if parameter > 0:
        _assert_same(lambda x, y: F.huber_loss(x, y, reduction=reduction, delta=parameter),
                     lambda x, y: TF.huber_loss(x, y, reduction=reduction, delta=parameter), input, target)


@given(pointwise_cases(), st.booleans(), st.booleans())
def test_binary_cross_entropy_with_logits(case, weighted, pos_weighted):
    input, target, weight, reduction = case
    probs = torch.sigmoid(target).detach().requires_grad_()
    pos_weight = torch.rand(input.shape[-1:], dtype=torch.float64) * 3 if pos_weighted and input.dim() else None
    options = dict(weight=weight if weighted else None, reduction=reduction, pos_weight=pos_weight)
    _assert_same(lambda x, y: F.binary_cross_entropy_with_logits(x, y, **options),
                 lambda x, y: TF.binary_cross_entropy_with_logits(x, y, **options), input, probs)


@given(pointwise_cases(), st.booleans())
def test_binary_cross_entropy(case, weighted):
    input, target, weight, reduction = case
    probs = torch.sigmoid(input).detach().requires_grad_()
    labels = torch.sigmoid(target).detach()
    options = dict(weight=weight if weighted else None, reduction=reduction)
    _assert_same(lambda p: F.binary_cross_entropy(p, labels, **options),
                 lambda p: TF.binary_cross_entropy(p, labels, **options), probs)


def test_binary_cross_entropy_log_clamp_at_exact_zero_and_one():
    probs = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(F.binary_cross_entropy(probs, labels, reduction="none"),
                               TF.binary_cross_entropy(probs, labels, reduction="none"))


@given(pointwise_cases(), st.sampled_from([0.0, 0.5]))
def test_margin_ranking_loss(case, margin):
    input, other, _, reduction = case
    sign = torch.where(torch.rand(input.shape) < 0.5, -1.0, 1.0).double()
    _assert_same(lambda a, b: F.margin_ranking_loss(a, b, sign, margin=margin, reduction=reduction),
                 lambda a, b: TF.margin_ranking_loss(a, b, sign, margin=margin, reduction=reduction),
                 input, other)


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
