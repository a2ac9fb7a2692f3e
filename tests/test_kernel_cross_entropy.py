"""Differential tests of the softmax-family kernels (cross entropy, NLL, softmax focal loss)
through the Triton interpreter: each call runs the public function on the kernels and is judged
against the float64 reference (and torch at the same dtype) by fusedloss.testing's tolerance
rule, forward and backward with a random grad_output.

Shapes stay small (the interpreter is slow); V = 1500 is above the interpreter's block of 1024
and not a multiple of it, so the multi-block online softmax and the two-pass gradient run.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import given
from hypothesis import strategies as st

from fusedloss import _args, _backend, _dispatch
from fusedloss import functional as F
from fusedloss.testing import assert_close_to_reference

# numpy's warnings from the interpreter evaluating log(0), 0 * inf and the like in lanes the
# kernels then mask or select away
BIG_V = 1500  # > interpreter block (1024), not a multiple of it
LOGIT_OPTIONS = {
    "plain": {},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "z_loss+softcap": {"z_loss": 1e-2, "softcap": 2.5},
}


def _logits(shape, dtype=torch.float32, scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    return values.to(dtype).requires_grad_()


def _labels(shape, num_classes, ignored=True, seed=1):
    """Class indices with every third token from the second on ignored (ignore_index -100)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, shape, generator=generator)
    if ignored and labels.dim() > 0:
        labels.view(-1)[1::3] = -100
    return labels


def _probabilities(shape, dtype=torch.float32, seed=2):
    generator = torch.Generator().manual_seed(seed)
    dim = 1 if len(shape) > 1 else 0
    return torch.softmax(torch.randn(shape, generator=generator, dtype=torch.float64), dim).to(dtype)


def _class_weight(num_classes, dtype=torch.float32, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.1).to(dtype)


# --- the kernels really run -----------------------------------------------------------------

def test_interpreter_resolves_to_the_kernels():
    assert _backend.interpreting(), "tests/conftest.py must set TRITON_INTERPRET=1"
    assert _backend.resolve("cpu") == "triton"
    for name in ("cross_entropy", "nll_loss", "softmax_focal_loss"):
        assert _dispatch.has_kernel(name)
    x = _logits((3, 5))
    target = torch.tensor([0, 4, 2])
    assert type(_dispatch.kernel_node(F.cross_entropy(x, target))).__name__ == "SweepCapture"
    assert type(_dispatch.kernel_node(F.softmax_focal_loss(x, target))).__name__ == "SweepCapture"
    assert type(_dispatch.kernel_node(F.nll_loss(x, target))).__name__ == "_NLLLossBackward"


# --- every option combination ---------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [5, BIG_V])
@pytest.mark.parametrize("logit_option", list(LOGIT_OPTIONS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_cross_entropy_options(labels, reduction, weighted, label_smoothing, logit_option,
                               num_classes):
    x = _logits((6, num_classes))
    target = _labels((6,), num_classes) if labels == "hard" else _probabilities((6, num_classes))
    weight = _class_weight(num_classes) if weighted else None
    assert_close_to_reference("cross_entropy", x, target, weight=weight, reduction=reduction,
                              label_smoothing=label_smoothing, **LOGIT_OPTIONS[logit_option])


def test_nll_loss_reduced_across_programs():
    """2100 tokens are three programs of the gather kernel (the interpreter's block of 1024):
    the last to finish sums their losses and weights in program order, and divides for 'mean'
    by the weights' sum, which the backward reads."""
    log_probs = torch.log_softmax(_logits((2100, 3)).detach(), 1).requires_grad_()
    target = _labels((2100,), 3)
    target[::4] = -100
    assert_close_to_reference("nll_loss", log_probs, target, weight=_class_weight(3))


@pytest.mark.parametrize("num_classes", [5, BIG_V])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_options(reduction, weighted, num_classes):
    log_probs = torch.log_softmax(_logits((6, num_classes)).detach(), 1).requires_grad_()
    weight = _class_weight(num_classes) if weighted else None
    assert_close_to_reference("nll_loss", log_probs, _labels((6,), num_classes), weight=weight,
                              reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_gradient_tiles(reduction, dtype):
    """The backward's tiles of the (N, C, S) gradient: 130 positions are three blocks of 64 and
    37 classes three of 16 (the interpreter's tile of 1024), with an ignore_index that is a
    class, whose ignored tokens' gradient is 0 at that class too."""
    log_probs = torch.log_softmax(_logits((2, 37, 130)).detach(), 1).to(dtype).requires_grad_()
    target = _labels((2, 130), 37)
    target.view(-1)[1::3] = 3
    assert_close_to_reference("nll_loss", log_probs, target, weight=_class_weight(37, dtype),
                              ignore_index=3, reduction=reduction)
    F.nll_loss(log_probs, target, ignore_index=3, reduction=reduction).sum().backward()
    ignored = (target == 3).unsqueeze(1).expand_as(log_probs)
    assert torch.equal(log_probs.grad[ignored], torch.zeros_like(log_probs.grad[ignored]))


@pytest.mark.parametrize("num_classes", [5, BIG_V])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_focal_loss_options(reduction, weighted, gamma, num_classes):
    alpha = _class_weight(num_classes) if weighted else None
    assert_close_to_reference("softmax_focal_loss", _logits((6, num_classes)),
                              _labels((6,), num_classes), alpha=alpha, gamma=gamma,
                              reduction=reduction)


@given(num_tokens=st.integers(1, 6),
       num_classes=st.one_of(st.integers(1, 40), st.integers(1025, 1300)),
       labels=st.sampled_from(["hard", "soft"]),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       weighted=st.booleans(),
       label_smoothing=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
       z_loss=st.sampled_from([0.0, 1e-4, 0.1]),
       softcap=st.sampled_from([None, 0.5, 30.0]),
       scale=st.sampled_from([0.1, 3.0, 30.0]),
       seed=st.integers(0, 2**16))
def test_cross_entropy_fuzz(num_tokens, num_classes, labels, reduction, weighted,
                            label_smoothing, z_loss, softcap, scale, seed):
    x = _logits((num_tokens, num_classes), scale=scale, seed=seed)
    if labels == "hard":
        target = _labels((num_tokens,), num_classes, seed=seed + 1)
    else:
        target = _probabilities((num_tokens, num_classes), seed=seed + 1)
    weight = _class_weight(num_classes, seed=seed + 2) if weighted else None
    assert_close_to_reference("cross_entropy", x, target, weight=weight, reduction=reduction,
                              label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)


# --- dtypes ---------------------------------------------------------------------------------

DTYPE_CASES = {
    "ce": ("cross_entropy", {}),
    "ce_weight_smoothing": ("cross_entropy", {"label_smoothing": 0.1, "weighted": True}),
    "ce_zloss_softcap_none": ("cross_entropy", {"z_loss": 1e-2, "softcap": 5.0, "reduction": "none"}),
    "ce_soft": ("cross_entropy", {"soft": True, "label_smoothing": 0.1}),
    "focal": ("softmax_focal_loss", {"weighted": True}),
    "nll": ("nll_loss", {"weighted": True}),
}


@pytest.mark.parametrize("case", list(DTYPE_CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype, case):
    name, options = DTYPE_CASES[case]
    options = dict(options)
    x = _logits((4, BIG_V), dtype=dtype)
    if name == "nll_loss":
        x = torch.log_softmax(x.detach().double(), 1).to(dtype).requires_grad_()
    target = _probabilities((4, BIG_V), dtype) if options.pop("soft", False) else _labels((4,), BIG_V)
    if options.pop("weighted", False):
        options["alpha" if name == "softmax_focal_loss" else "weight"] = _class_weight(BIG_V, dtype)
    assert_close_to_reference(name, x, target, **options)
    loss = getattr(F, name)(x, target, **options)
    assert loss.dtype == dtype  # torch's rule: the loss in the input's dtype


# --- shapes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "softmax_focal_loss"])
def test_spatial_input(name, reduction):
    """(N, C, d1, d2) input: tokens addressed by strides, class stride d1*d2."""
    x = _logits((2, 7, 3, 4))
    assert_close_to_reference(name, x, _labels((2, 3, 4), 7), reduction=reduction)


def test_spatial_soft_labels_and_options():
    x = _logits((2, 7, 3, 4))
    assert_close_to_reference("cross_entropy", x, _probabilities((2, 7, 3, 4)),
                              label_smoothing=0.1, z_loss=1e-2, softcap=2.0)
    assert_close_to_reference("cross_entropy", x, _labels((2, 3, 4), 7), reduction="none",
                              weight=_class_weight(7), label_smoothing=0.3, return_lse=True)


def test_non_contiguous_inputs():
    """Class stride != 1 (a transposed view) and non-mergeable spatial dims (a copy)."""
    transposed = _logits((BIG_V, 5)).detach().t().requires_grad_()
    assert_close_to_reference("cross_entropy", transposed, _labels((5,), BIG_V),
                              label_smoothing=0.1)
    permuted = _logits((2, 4, 3, 5)).detach().permute(0, 3, 2, 1).requires_grad_()
    assert_close_to_reference("cross_entropy", permuted, _labels((2, 3, 4), 5), reduction="none")


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "softmax_focal_loss"])
def test_single_sample(name):
    """(C,) input with a 0-d target."""
    assert_close_to_reference(name, _logits((9,)), torch.tensor(3), reduction="none")
    assert_close_to_reference(name, _logits((9,)), torch.tensor(3))


def test_single_sample_soft_labels():
    assert_close_to_reference("cross_entropy", _logits((9,)), _probabilities((9,)), return_lse=True)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "softmax_focal_loss"])
def test_one_class(name):
    x = _logits((4, 1))
    target = torch.tensor([0, -100, 0, 0])
    assert_close_to_reference(name, x, target)
    assert_close_to_reference(name, x, target, reduction="none")
    if name == "cross_entropy":
        assert_close_to_reference(name, x, target, label_smoothing=0.3, z_loss=0.1, softcap=1.0)
        assert_close_to_reference(name, x, torch.ones(4, 1))


# --- numerics -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits(dtype):
    x = torch.full((4, BIG_V), -1e4, dtype=torch.float64)
    x[:, ::7] = 1e4
    x[1] = torch.linspace(-1e4, 1e4, BIG_V)
    x = x.to(dtype).requires_grad_()
    target = torch.tensor([0, BIG_V - 1, 3, -100])
    assert_close_to_reference("cross_entropy", x, target)
    assert_close_to_reference("cross_entropy", x, target, label_smoothing=0.1, reduction="none")
    assert_close_to_reference("softmax_focal_loss", x, target)


def test_target_probability_near_one():
    """p_t within 1e-10 of 1: the target lane's (p - 1) and focal's 1 - p_t lose nothing."""
    x = torch.zeros(3, BIG_V, dtype=torch.float64)
    target = torch.tensor([5, 1200, 7])
    x[torch.arange(3), target] = 30.0
    x = x.requires_grad_()
    assert_close_to_reference("cross_entropy", x, target, reduction="none")
    assert_close_to_reference("softmax_focal_loss", x, target, reduction="none")


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_gradient_finite_at_certainty(gamma):
    """p_t == 1 exactly (one class, or a margin of 1e3): the focal gradient is its limit, 0 for
    the target's coefficient, not 0 * inf. (The float64 reference differentiates
    (1 - p)**gamma at 0 and gives NaN for gamma < 1, so this is checked against the limit.)"""
    x = torch.zeros(3, 5)
    x[:, 2] = 1e3
    for logits in (x, torch.randn(3, 1)):
        logits = logits.clone().requires_grad_()
        target = torch.full((3,), 2 if logits.shape[1] > 1 else 0)
        loss = F.softmax_focal_loss(logits, target, gamma=gamma, reduction="sum")
        (grad,) = torch.autograd.grad(loss, logits)
        assert loss == 0 and torch.equal(grad, torch.zeros_like(grad))


def test_negative_infinite_logits():
    """-inf logits carry no probability. With label smoothing the loss is +inf (as torch);
    without it, and for ignored tokens, it stays finite; also checked against torch directly."""
    x = _logits((4, BIG_V)).detach()
    x[:, 10:700] = float("-inf")
    x[2, 1300:] = float("-inf")
    target = torch.tensor([3, 800, 5, -100])
    for options in ({}, {"reduction": "none"}, {"label_smoothing": 0.1}, {"softcap": 4.0}):
        assert_close_to_reference("cross_entropy", x.clone().requires_grad_(), target, **options)
    ours, expected = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad_output = torch.rand(4) + 0.5
    loss = F.cross_entropy(ours, target, reduction="none")
    torch_loss = torch_F.cross_entropy(expected, target, reduction="none")
    torch.autograd.backward(loss, grad_output)
    torch.autograd.backward(torch_loss, grad_output)
    torch.testing.assert_close(loss, torch_loss)
    torch.testing.assert_close(ours.grad, expected.grad)


def test_one_hot_soft_labels_equal_hard_labels():
    x = _logits((5, BIG_V))
    target = torch.tensor([0, 17, BIG_V - 1, 1024, 3])
    one_hot = torch_F.one_hot(target, BIG_V).float()
    weight = _class_weight(BIG_V)
    for options in ({}, {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 3.0}):
        hard_x, soft_x = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        hard = F.cross_entropy(hard_x, target, reduction="none", weight=weight, **options)
        soft = F.cross_entropy(soft_x, one_hot, reduction="none", weight=weight, **options)
        grad_output = torch.rand(5) + 0.5
        torch.autograd.backward(hard, grad_output)
        torch.autograd.backward(soft, grad_output)
        torch.testing.assert_close(hard, soft)
        torch.testing.assert_close(hard_x.grad, soft_x.grad)


def test_gradient_scales_with_grad_output():
    x = _logits((4, BIG_V))
    target = _labels((4,), BIG_V)
    (once,) = torch.autograd.grad(F.cross_entropy(x, target, label_smoothing=0.1), x)
    (thrice,) = torch.autograd.grad(3.0 * F.cross_entropy(x, target, label_smoothing=0.1), x)
    torch.testing.assert_close(thrice, 3.0 * once)
    per_token = torch.tensor([2.0, 0.0, -1.0, 0.5])
    loss = F.cross_entropy(x, target, reduction="none", z_loss=1e-2)
    (grad,) = torch.autograd.grad(loss, x, per_token)
    expected_x = x.detach().clone().requires_grad_()
    expected = torch_F.cross_entropy(expected_x, target, reduction="none") \
        + 1e-2 * torch.logsumexp(expected_x, 1) ** 2 * (target != -100)
    (expected_grad,) = torch.autograd.grad(expected, expected_x, per_token)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "softmax_focal_loss"])
def test_all_ignored(name):
    """torch: NaN for 'mean' (0 / 0), 0 for 'sum', and a zero gradient either way."""
    x = _logits((3, BIG_V))
    target = torch.full((3,), -100)
    for reduction, expected in (("mean", float("nan")), ("sum", 0.0)):
        loss = getattr(F, name)(x, target, reduction=reduction)
        torch.testing.assert_close(loss, torch.tensor(expected), equal_nan=True)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_empty_batch():
    x = _logits((0, 5))
    target = torch.zeros(0, dtype=torch.long)
    assert torch.isnan(F.cross_entropy(x, target))
    assert F.cross_entropy(x, target, reduction="sum") == 0
    assert F.cross_entropy(x, target, reduction="none").shape == (0,)
    # nothing was written into the logits: their version is untouched, so a use saved before the
    # loss (a checkpoint's recomputation, here) still differentiates
    assert x._version == 0
    scaled = x * 2
    F.cross_entropy(x, target, reduction="sum").backward()
    scaled.sum().backward()


# --- rows split at 16-byte boundaries -------------------------------------------------------

def _row_vector(x, **launch_tensors):
    from fusedloss.triton_kernels.cross_entropy import _aligned_vector, _as_tokens
    return _aligned_vector(_as_tokens(x), *(_as_tokens(t) for t in launch_tensors.values()))


def test_rows_split_only_where_the_compiler_cannot_prove_them_aligned():
    odd = torch.zeros(4, 1029)
    assert _row_vector(odd) == 4 and _row_vector(odd.bfloat16()) == 8
    assert _row_vector(odd.double()) == 2
    assert _row_vector(odd, grad=torch.empty_like(odd)) == 4
    assert _row_vector(torch.zeros(4, 1024)) == 1  # a multiple of 16: already vectorised
    assert _row_vector(torch.zeros(1029, 4).t()) == 1  # classes not contiguous
    assert _row_vector(torch.zeros(4 * 1029 + 1)[1:].view(4, 1029)) == 1  # start not aligned
    assert _row_vector(odd, grad=torch.zeros(4, 2048)[:, :1029]) == 1  # other strides


def test_rows_stay_whole_where_split_ones_spilled():
    from fusedloss.triton_kernels.cross_entropy import _split_fits_registers
    assert _split_fits_registers(torch.bfloat16, True, 0.1, 0.0, None)
    assert _split_fits_registers(torch.bfloat16, True, 0.0, 1e-4, 30.0)
    assert _split_fits_registers(torch.float32, True, 0.1, 1e-4, 30.0)
    assert not _split_fits_registers(torch.bfloat16, True, 0.1, 0.0, 30.0)
    assert not _split_fits_registers(torch.float64, False, 0.0, 0.0, None)
    x = _logits((9, 1029), dtype=torch.bfloat16)
    target = _labels((9,), 1029)
    assert_close_to_reference("cross_entropy", x, target, weight=_class_weight(1029, x.dtype),
                              label_smoothing=0.1, softcap=2.5)


SPLIT_CASES = {
    "hard, every option": dict(label_smoothing=0.1, z_loss=1e-2, softcap=2.5, return_lse=True),
    "hard, weights, none": dict(weight=True, label_smoothing=0.1, reduction="none"),
    "soft": dict(soft=True, label_smoothing=0.2, z_loss=1e-2),
    "focal": dict(focal=True, weight=True),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
@pytest.mark.parametrize("num_classes", [3, 13, 1029])  # under a vector, one block, two blocks
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_split_at_16_byte_boundaries(dtype, num_classes, case):
    """Rows of 16- and 32-bit logits whose length is no multiple of 16 bytes run as an unaligned
    head, a vectorised body and a tail: 9 rows take every head length in both dtypes, and the
    rows of 3 classes lie inside their head (no body at all)."""
    options = dict(SPLIT_CASES[case])
    soft, focal = options.pop("soft", False), options.pop("focal", False)
    x = _logits((9, num_classes), dtype=dtype)
    target = _probabilities((9, num_classes), dtype) if soft else _labels((9,), num_classes)
    if options.pop("weight", False):
        options["alpha" if focal else "weight"] = _class_weight(num_classes, dtype)
    assert _row_vector(x) == 16 // x.element_size()
    name = "softmax_focal_loss" if focal else "cross_entropy"
    assert_close_to_reference(name, x, target, **options)


def test_split_rows_inplace_backward_and_ignored_rows():
    """inplace_backward writes the split rows into the logits' storage; an ignored row's zeros
    reach its head and tail too."""
    x = _logits((9, 1029))
    target = _labels((9,), 1029)
    expected = x.detach().clone().requires_grad_()
    torch_F.cross_entropy(expected, target).backward()
    F.cross_entropy(x, target, inplace_backward=True).backward()
    assert x.grad.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x.grad, expected.grad)
    assert torch.equal(x.grad[1::3], torch.zeros(3, 1029))


# --- rows held whole in one block -----------------------------------------------------------

@pytest.fixture
def held_launches(monkeypatch, kernel_launches):
    """Rows held whole up to 4096 classes (the GPU's 32768, four of the interpreter's blocks, as
    the GPU's is four of its): the keyword arguments of each row-kernel launch."""
    from fusedloss.triton_kernels import cross_entropy as kernels
    monkeypatch.setattr(kernels, "MAX_HELD_ROW", 4096)
    return kernel_launches(kernels, "_softmax_loss_kernel")


HELD_CASES = {  # calls whose rows are held: hard labels, nothing else live beside the row
    "mean": {}, "weights, sum": dict(weight=True, reduction="sum"),
    "weights, none": dict(weight=True, reduction="none"), "no gradient": dict(grad=False),
}


@pytest.mark.parametrize("case", list(HELD_CASES))
@pytest.mark.parametrize("num_classes", [2000, 4096])  # a masked block of 2048, a full one
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_held_whole_in_one_block(held_launches, dtype, num_classes, case):
    """A row longer than the block but within MAX_HELD_ROW, of a call with nothing else live
    beside it, is swept as one block held in registers (read once) and agrees with the
    reference, ignored tokens included."""
    options = dict(HELD_CASES[case])
    x = _logits((6, num_classes), dtype=dtype).requires_grad_(options.pop("grad", True))
    if options.pop("weight", False):
        options["weight"] = _class_weight(num_classes, dtype)
    assert_close_to_reference("cross_entropy", x, _labels((6,), num_classes), **options)
    block = 2048 if num_classes == 2000 else 4096
    assert held_launches and all(launch["SINGLE_BLOCK"] and launch["BLOCK"] == block
                                 for launch in held_launches)


def test_held_rows_inplace_backward(held_launches):
    """A held row's gradient written over its own logits (inplace_backward) is the out-of-place
    gradient bit for bit, ignored rows' zeros included."""
    x = _logits((6, 2000), dtype=torch.bfloat16)
    target = _labels((6,), 2000)
    inplace = x.detach().clone().requires_grad_()
    F.cross_entropy(x, target).backward()
    F.cross_entropy(inplace, target, inplace_backward=True).backward()
    assert inplace.grad.data_ptr() == inplace.data_ptr()
    assert torch.equal(inplace.grad, x.grad)
    assert all(launch["SINGLE_BLOCK"] for launch in held_launches)


NOT_HELD_CASES = {  # what keeps more beside the row, or a row the kernel splits
    "smoothing": dict(label_smoothing=0.1), "z-loss": dict(z_loss=1e-2),
    "softcap": dict(softcap=2.5), "lse": dict(return_lse=True), "focal": dict(focal=True),
    "soft labels": dict(soft=True), "fp64": dict(dtype=torch.float64),
    "rows split": dict(num_classes=2001), "beyond the limit": dict(num_classes=4097),
    "classes strided": dict(spatial=True),
}


@pytest.mark.parametrize("case", list(NOT_HELD_CASES))
def test_rows_not_held_loop_over_blocks(held_launches, case):
    options = dict(NOT_HELD_CASES[case])
    num_classes, dtype = options.pop("num_classes", 2000), options.pop("dtype", torch.float32)
    soft, focal = options.pop("soft", False), options.pop("focal", False)
    spatial = (2,) if options.pop("spatial", False) else ()  # (N, C, 2): classes 2 apart
    x = _logits((3, num_classes, *spatial), dtype=dtype)
    target = (_probabilities((3, num_classes, *spatial), dtype) if soft
              else _labels((3, *spatial), num_classes))
    assert_close_to_reference("softmax_focal_loss" if focal else "cross_entropy", x, target,
                              **options)
    assert held_launches and not any(launch["SINGLE_BLOCK"] for launch in held_launches)


# --- looped rows: blocks aligned to the row's end, the last one kept for pass 2 -------------

@pytest.fixture
def row_launches(kernel_launches):
    from fusedloss.triton_kernels import cross_entropy as kernels
    return kernel_launches(kernels, "_softmax_loss_kernel")


LOOPED_CASES = {  # (options, whether the last block is kept in registers)
    "mean": ({}, True), "weights, none": (dict(weight=True, reduction="none"), True),
    "soft labels, their gradient": (dict(soft=True), True),
    "smoothing, z-loss, soft-capping, lse": (
        dict(label_smoothing=0.1, z_loss=1e-2, softcap=2.5, return_lse=True), True),
    "focal": (dict(focal=True, weight=True), True),
    "weights with smoothing": (dict(weight=True, label_smoothing=0.1), False),
    "fp64": (dict(dtype=torch.float64), False),
}


@pytest.mark.parametrize("case", list(LOOPED_CASES))
@pytest.mark.parametrize("num_classes", [3072, 2500, 1031])  # whole blocks; a partial first one;
def test_looped_rows_keep_their_last_block(row_launches, num_classes, case):  # a split row
    """A row of several blocks is swept in blocks that end where the row ends (the first one
    partial, starting before the row), pass 2 runs from the last block, which is kept from
    pass 1 where that fits the registers, down to the first, and every value and gradient
    agrees with the reference (ignored tokens, a head and tail of split rows included)."""
    options, kept = LOOPED_CASES[case]
    options = dict(options)
    dtype = options.pop("dtype", torch.bfloat16 if num_classes == 1031 else torch.float32)
    soft, focal = options.pop("soft", False), options.pop("focal", False)
    x = _logits((5, num_classes), dtype=dtype)
    target = (_probabilities((5, num_classes), dtype).requires_grad_() if soft
              else _labels((5,), num_classes))
    if options.pop("weight", False):
        options["alpha" if focal else "weight"] = _class_weight(num_classes, dtype)
    assert_close_to_reference("softmax_focal_loss" if focal else "cross_entropy", x, target,
                              **options)
    assert row_launches and all(not launch["SINGLE_BLOCK"] and launch["HOLD_LAST"] == kept
                                for launch in row_launches)


@pytest.mark.parametrize("num_classes", [2500, 1000])
def test_fp64_rows_loop_over_half_blocks(row_launches, num_classes):
    """fp64 rows longer than a block loop over blocks half as wide (the full width spilled
    registers for sm_90); a row that fits one block keeps it whole."""
    from fusedloss.triton_kernels._common import MAX_ROW_BLOCK
    x = _logits((5, num_classes), dtype=torch.float64)
    assert_close_to_reference("cross_entropy", x, _labels((5,), num_classes), label_smoothing=0.1)
    looped = num_classes > MAX_ROW_BLOCK
    assert row_launches and all(
        launch["BLOCK"] == (MAX_ROW_BLOCK // 2 if looped else 1024)
        and launch["SINGLE_BLOCK"] != looped for launch in row_launches)


def test_looped_rows_inplace_backward(row_launches):
    """The kept last block's gradient written over the logits first, then the blocks below it
    read and overwritten one by one: the out-of-place gradient bit for bit."""
    x = _logits((6, 2500), dtype=torch.bfloat16)
    target = _labels((6,), 2500)
    inplace = x.detach().clone().requires_grad_()
    F.cross_entropy(x, target, label_smoothing=0.1).backward()
    F.cross_entropy(inplace, target, label_smoothing=0.1, inplace_backward=True).backward()
    assert inplace.grad.data_ptr() == inplace.data_ptr()
    assert torch.equal(inplace.grad, x.grad)
    assert all(launch["HOLD_LAST"] and not launch["SINGLE_BLOCK"] for launch in row_launches)


# --- memory options and extra outputs -------------------------------------------------------

@pytest.mark.parametrize("shape,reduction", [((4, BIG_V), "mean"), ((2, 6, 3), "none")])
def test_inplace_backward_writes_into_logits(shape, reduction):
    x = _logits(shape)
    original = x.detach().clone()
    target = _labels(shape[:1] + shape[2:], shape[1])
    grad_output = torch.rand(target.shape) + 0.5 if reduction == "none" else torch.tensor(1.7)
    loss = F.cross_entropy(x, target, reduction=reduction, label_smoothing=0.1,
                           inplace_backward=True)
    assert not torch.equal(x.detach(), original), "the logits' storage should hold the gradient"
    loss.backward(grad_output)
    assert x.grad.data_ptr() == x.data_ptr()
    expected_x = original.clone().requires_grad_()
    torch_F.cross_entropy(expected_x, target, reduction=reduction,
                          label_smoothing=0.1).backward(grad_output)
    torch.testing.assert_close(x.grad, expected_x.grad)
    assert_close_to_reference("cross_entropy", original.clone().requires_grad_(), target,
                              reduction=reduction, inplace_backward=True)


def test_input_untouched_without_inplace_backward():
    x = _logits((4, BIG_V))
    original = x.detach().clone()
    target = _labels((4,), BIG_V)
    F.cross_entropy(x, target, label_smoothing=0.1, softcap=3.0).backward()
    assert torch.equal(x.detach(), original)
    assert x.grad.data_ptr() != x.data_ptr()
    frozen = original.clone()
    F.cross_entropy(frozen, target, inplace_backward=True)  # no grad wanted: nothing written
    assert torch.equal(frozen, original)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_return_lse(dtype):
    x = _logits((2, 5, 3), dtype=dtype)
    target = _labels((2, 3), 5)
    loss, lse = F.cross_entropy(x, target, return_lse=True, softcap=2.0)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert lse.shape == target.shape and not lse.requires_grad
    capped = 2.0 * torch.tanh(x.detach().double() / 2.0)
    torch.testing.assert_close(lse.double(), torch.logsumexp(capped, 1),
                               rtol=1e-6 if dtype != torch.bfloat16 else 1e-2, atol=1e-6)
    loss.backward()  # lse is a side output: backward through the loss alone works
    assert_close_to_reference("cross_entropy", x.detach().clone().requires_grad_(), target,
                              return_lse=True, z_loss=1e-3)


def test_weights_requiring_grad_are_refused():
    x = _logits((3, 5))
    with pytest.raises(RuntimeError, match="not differentiable"):  # torch's error for a class weight
        F.nll_loss(x, torch.tensor([0, 1, 2]), weight=torch.ones(5, requires_grad=True))
    with pytest.raises(RuntimeError, match="not differentiable"):
        F.cross_entropy(x, torch.tensor([0, 1, 2]), weight=torch.ones(5, requires_grad=True))
    with pytest.raises(NotImplementedError, match="requires grad"):  # soft targets: no kernel gradient
        F.cross_entropy(x, _probabilities((3, 5)), weight=torch.ones(5, requires_grad=True))


@pytest.mark.parametrize("options", [dict(reduction="mean"), dict(reduction="sum", label_smoothing=0.2),
                                     dict(reduction="none", weight=True)], ids=str)
@pytest.mark.parametrize("shape,logits_grad", [((3, 2500), True), ((2, 5, 3), False)])
def test_soft_targets_requiring_grad(shape, logits_grad, options):
    """The probabilities' gradient (issue 13) against torch's autograd, fp64, with a
    grad_output other than 1; the logits' gradient beside it when they require grad too."""
    x = _logits(shape, torch.float64).requires_grad_(logits_grad)
    q = torch.softmax(_logits(shape, torch.float64, seed=1), 1).requires_grad_()
    if options.get("weight"):
        options = dict(options, weight=torch.rand(shape[1], dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(2)).to(x.device))
    leaves = [x, q] if logits_grad else [q]
    loss = F.cross_entropy(x, q, **options)
    expected = torch_F.cross_entropy(x, q, **options)
    grad_output = torch.rand(loss.shape, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(3)).to(x.device) + 0.5
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, leaves, grad_output),
                         torch.autograd.grad(expected, leaves, grad_output)):
        torch.testing.assert_close(got, want)


RANGE_CASES = [  # (ignore_index, labels, whether torch accepts them) with 5 classes
    (-100, [0, -100, 4], True), (-100, [0, -100, -5], False), (-100, [0, -100, 5], False),
    (-1, [-1, 4, 0], True), (-1, [-2, 4, 0], False), (5, [5, 4, 0], True), (5, [6, 0, 0], False),
    (2, [2, -1, 0], False),
]


@pytest.mark.cpu_tensors
@pytest.mark.parametrize("ignore_index,labels,valid", RANGE_CASES)
def test_target_range_check(ignore_index, labels, valid):
    """The CPU's one-pass check (ignored targets masked, or an ignore_index next to the classes
    widening the range) accepts exactly what torch accepts, with torch's IndexError."""
    x = torch.randn(3, 5)
    target = torch.tensor(labels)
    if valid:
        torch.testing.assert_close(F.cross_entropy(x, target, ignore_index=ignore_index),
                                   torch_F.cross_entropy(x, target, ignore_index=ignore_index))
    else:
        with pytest.raises(IndexError, match="out of bounds"):
            F.cross_entropy(x, target, ignore_index=ignore_index)


@pytest.mark.cpu_tensors
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("call", ["cross_entropy", "weighted", "softmax_focal_loss",
                                  "weighted nll_loss"])
@pytest.mark.parametrize("ignore_index,labels,valid", RANGE_CASES)
def test_target_range_check_recorded_by_the_kernel(ignore_index, labels, valid, call, reduction):
    """CUDA's path (checks queued, _args.checks_queued_as_on_cuda): the row kernel (NLL's gather
    kernel) records the check as it reads the targets and one assert is queued on its verdict.
    It refuses what torch refuses, with the queued message, and where it accepts, loss and
    gradient are the host path's, bit for bit (an out-of-range target is never read at, so
    nothing faults before the assert)."""
    def run(queued):
        x = _logits((3, 5))
        target = torch.tensor(labels)
        with _args.checks_queued_as_on_cuda() if queued else contextlib.nullcontext():
            if call == "softmax_focal_loss":
                loss = F.softmax_focal_loss(x, target, ignore_index=ignore_index,
                                            reduction=reduction)
            elif call == "weighted nll_loss":
                loss = F.nll_loss(x, target, _class_weight(5), ignore_index=ignore_index,
                                  reduction=reduction)
            else:
                loss = F.cross_entropy(x, target, _class_weight(5) if call == "weighted" else None,
                                       ignore_index=ignore_index, reduction=reduction)
        loss.sum().backward()
        return loss, x.grad

    with _backend.use_backend("triton"):
        if not valid:
            with pytest.raises(RuntimeError, match="target out of bounds for 5 classes"):
                run(queued=True)
            return
        for got, want in zip(run(queued=True), run(queued=False)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_reduced_loss_can_be_added_to_in_place():
    """The loss is its own tensor, not a view of the kernel's workspace: `loss += aux` works."""
    x = _logits((4, 9))
    target = torch.tensor([0, 8, -100, 3], device=x.device)
    loss = F.cross_entropy(x, target)
    loss += 2.0
    loss.backward()
    expected_x = x.detach().clone().requires_grad_()
    torch_F.cross_entropy(expected_x, target).backward()
    torch.testing.assert_close(loss, torch_F.cross_entropy(expected_x, target) + 2.0)
    torch.testing.assert_close(x.grad, expected_x.grad)
