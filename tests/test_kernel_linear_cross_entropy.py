"""Differential tests of the chunked linear + cross-entropy kernel through the Triton
interpreter: each call runs fusedloss.functional.linear_cross_entropy on the kernels and is judged
against the float64 reference (and torch at the same dtype) by fusedloss.testing's tolerance
rule, values and the gradients of input, linear_weight and linear_bias after a random
grad_output.

Blocks are forced small (CHUNK tokens x classes) so that every call runs several token chunks
with a shorter tail and two vocabulary chunks, 1100 + 400 of V = 1500: the first is above the
interpreter's row block of 1024, so the row kernel's multi-block sweep runs within a chunk too.
"""
import pytest
import torch
import torch.nn.functional as torch_F
from torch.utils._python_dispatch import TorchDispatchMode

from fusedloss import _dispatch
from fusedloss import functional as F
from fusedloss.testing import assert_close_to_reference
from fusedloss.testing.twins import torch_function
from fusedloss.triton_kernels import linear_cross_entropy as lce

torch_linear_cross_entropy = torch_function("linear_cross_entropy")  # a composition before torch 2.13

N, H, BIG_V = 10, 12, 1500  # N = CHUNK + 2: a full token chunk and a tail
CHUNK = (8, 1100)  # tokens x classes: V = 1500 splits into 1100 + 400
LOGIT_OPTIONS = {
    "plain": {},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "z_loss+softcap": {"z_loss": 1e-2, "softcap": 2.5},
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(lce, "CHUNK", CHUNK)


def _randn(shape, dtype=torch.float32, scale=1.0, seed=0, grad=True):
    generator = torch.Generator().manual_seed(seed)
    values = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    return values.to(dtype).requires_grad_(grad)


def _problem(num_rows=N, num_classes=BIG_V, dtype=torch.float32, bias=True, seed=0):
    """(input, linear_weight, target, linear_bias): logits of a few units, every third target
    from the second on ignored."""
    x = _randn((num_rows, H), dtype, seed=seed)
    w = _randn((num_classes, H), dtype, scale=H ** -0.5 * 2, seed=seed + 1)
    b = _randn((num_classes,), dtype, scale=0.5, seed=seed + 2) if bias else None
    generator = torch.Generator().manual_seed(seed + 3)
    target = torch.randint(0, num_classes, (num_rows,), generator=generator)
    target[1::3] = -100
    return x, w, target, b


def _class_weight(num_classes, dtype=torch.float32, seed=4):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.1).to(dtype)


# --- the kernel really runs -----------------------------------------------------------------

def test_interpreter_resolves_to_the_kernel():
    assert _dispatch.has_kernel("linear_cross_entropy")
    x, w, target, b = _problem(num_rows=3, num_classes=5)
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b)
    assert type(_dispatch.kernel_node(loss)).__name__ == "SweepCapture"


# --- every option combination ---------------------------------------------------------------

@pytest.mark.parametrize("logit_option", list(LOGIT_OPTIONS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])  # 'sum': test_dtypes, test_matches_torch_in_float64
def test_options(reduction, weighted, label_smoothing, logit_option):
    x, w, target, b = _problem()
    weight = _class_weight(BIG_V) if weighted else None
    assert_close_to_reference("linear_cross_entropy", x, w, target, linear_bias=b, weight=weight,
                              reduction=reduction, label_smoothing=label_smoothing,
                              **LOGIT_OPTIONS[logit_option])


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("requires_grad", ["input", "weight", "bias", "input+bias", "none"])
def test_gradients_only_where_required(requires_grad, reduction):
    x, w, target, b = _problem(num_classes=37)
    for name, tensor in (("input", x), ("weight", w), ("bias", b)):
        tensor.requires_grad_(name in requires_grad.split("+"))
    assert_close_to_reference("linear_cross_entropy", x, w, target, linear_bias=b,
                              reduction=reduction, label_smoothing=0.1)
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction)
    assert loss.requires_grad == (requires_grad != "none")


def test_no_bias_and_custom_ignore_index():
    x, w, target, _ = _problem()
    target[target == -100] = 0
    for reduction in ("mean", "none"):
        assert_close_to_reference("linear_cross_entropy", x, w, target, ignore_index=0,
                                  reduction=reduction, label_smoothing=0.3, z_loss=1e-3)


def test_negative_label_smoothing():
    """torch bounds label_smoothing above only."""
    x, w, target, b = _problem(num_classes=37)
    assert_close_to_reference("linear_cross_entropy", x, w, target, linear_bias=b,
                              label_smoothing=-0.2, weight=_class_weight(37))


def test_soft_targets():
    x, w, _, b = _problem(num_rows=5)
    probabilities = torch.softmax(_randn((5, BIG_V), grad=False, seed=9), 1)
    for reduction in ("mean", "none"):
        assert_close_to_reference("linear_cross_entropy", x, w, probabilities, linear_bias=b,
                                  reduction=reduction, label_smoothing=0.1, z_loss=1e-3,
                                  softcap=4.0)


# --- dtypes ---------------------------------------------------------------------------------

DTYPE_OPTIONS = {
    "plain": {},
    "weight+smoothing": {"weighted": True, "label_smoothing": 0.1},
    "z_loss+softcap+none": {"z_loss": 1e-2, "softcap": 5.0, "reduction": "none"},
    "sum": {"reduction": "sum"},
}


@pytest.mark.parametrize("options", list(DTYPE_OPTIONS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype, options):
    options = dict(DTYPE_OPTIONS[options])
    x, w, target, b = _problem(dtype=dtype)
    if options.pop("weighted", False):
        options["weight"] = _class_weight(BIG_V, dtype)
    assert_close_to_reference("linear_cross_entropy", x, w, target, linear_bias=b, **options)
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b, **options)
    assert loss.dtype == dtype  # torch's rule: the loss in the input's dtype
    loss.sum().backward()
    assert (x.grad.dtype, w.grad.dtype, b.grad.dtype) == (dtype, dtype, dtype)


# --- chunking -------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk,num_classes", [((1, 700), BIG_V), ((3, 1100), BIG_V),
                                               ((N, BIG_V), BIG_V), ((64, 4096), BIG_V),
                                               ((3, 1), 7)])
def test_chunk_size_does_not_change_the_result(monkeypatch, chunk, num_classes):
    """One token per block, token and class tails, one block, a block larger than the problem,
    one class per block."""
    monkeypatch.setattr(lce, "CHUNK", chunk)
    x, w, target, b = _problem(dtype=torch.float64, num_classes=num_classes)
    expected = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    grad_output = torch.tensor(0.7, dtype=torch.float64)
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b, label_smoothing=0.1)
    loss.backward(grad_output)
    torch_loss = torch_linear_cross_entropy(expected[0], expected[1], target,
                                              linear_bias=expected[2], label_smoothing=0.1)
    torch_loss.backward(grad_output)
    torch.testing.assert_close(loss, torch_loss)
    for ours, theirs in zip((x, w, b), expected):
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_chunk_shape():
    """The GPU's 4096 x 4096 block (the module header says why), never beyond the problem."""
    assert lce.GPU_CHUNK == (4096, 4096)
    assert lce.chunk_shape(100, 37) == (8, 37)  # the fixture's CHUNK rows, all 37 classes
    assert lce.chunk_shape(0, 0) == (1, 1)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor (in bytes: the interpreter views storages as bytes) any aten
    op creates or returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if torch.is_tensor(value):
                self.largest = max(self.largest, value.numel() * value.element_size())
        return result


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_logits_sized_buffer(reduction):
    """Nothing of N x V elements exists at any point of the forward or the backward: the largest
    tensor is a logits block (CHUNK) or the weight-sized gradient (V x H), both well below."""
    fp32 = 4
    x, w, target, b = _problem(num_rows=16)
    spy = _LargestAllocation()
    with spy:
        loss = F.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction,
                                      label_smoothing=0.1)
        loss.backward(torch.ones_like(loss))
    assert spy.largest <= fp32 * max(CHUNK[0] * CHUNK[1], BIG_V * H) < fp32 * 16 * BIG_V


# --- shapes and edge cases ------------------------------------------------------------------

def test_single_sample():
    """(H,) input with a 0-d target."""
    x = _randn((H,))
    w, b = _randn((BIG_V, H), scale=0.5, seed=1), _randn((BIG_V,), seed=2)
    for reduction in ("mean", "none"):
        assert_close_to_reference("linear_cross_entropy", x, w, torch.tensor(1234),
                                  linear_bias=b, reduction=reduction, return_lse=True)
    loss, lse = F.linear_cross_entropy(x, w, torch.tensor(3), reduction="none", return_lse=True)
    assert loss.shape == () and lse.shape == ()


def test_all_ignored():
    """torch: NaN for 'mean' (0 / 0), 0 for 'sum', and zero gradients either way."""
    x, w, _, b = _problem()
    target = torch.full((N,), -100)
    for reduction, expected in (("mean", float("nan")), ("sum", 0.0)):
        loss = F.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction)
        torch.testing.assert_close(loss, torch.tensor(expected), equal_nan=True)
        for grad in torch.autograd.grad(loss, (x, w, b)):
            assert torch.equal(grad, torch.zeros_like(grad))


def test_empty_batch():
    x, w, target, b = _problem(num_rows=0)
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b)
    assert torch.isnan(loss)
    grads = torch.autograd.grad(F.linear_cross_entropy(x, w, target, linear_bias=b,
                                                       reduction="sum"), (x, w, b))
    assert grads[0].shape == (0, H) and not grads[1].any() and not grads[2].any()
    assert F.linear_cross_entropy(x, w, target, reduction="none").shape == (0,)


def test_non_contiguous_weight():
    """A transposed (H, V) storage, as with a tied embedding kept the other way round."""
    x, w, target, b = _problem()
    transposed = w.detach().t().contiguous().t().requires_grad_()
    assert not transposed.is_contiguous()
    assert_close_to_reference("linear_cross_entropy", x, transposed, target, linear_bias=b)


def test_matches_torch_in_float64():
    x, w, target, b = _problem(dtype=torch.float64)
    weight = _class_weight(BIG_V, torch.float64)
    for reduction in ("mean", "sum", "none"):
        options = dict(linear_bias=b, weight=weight, reduction=reduction, label_smoothing=0.2)
        ours = F.linear_cross_entropy(x, w, target, **options)
        theirs = torch_linear_cross_entropy(x, w, target, **options)
        torch.testing.assert_close(ours, theirs)
        grad_output = torch.rand(ours.shape, dtype=torch.float64) + 0.5
        ours_grads = torch.autograd.grad(ours, (x, w, b), grad_output)
        theirs_grads = torch.autograd.grad(theirs, (x, w, b), grad_output)
        for mine, expected in zip(ours_grads, theirs_grads):
            torch.testing.assert_close(mine, expected)


# --- gradients and extra outputs ------------------------------------------------------------

def test_gradient_scales_with_grad_output():
    x, w, target, b = _problem(num_classes=37)
    once = torch.autograd.grad(F.linear_cross_entropy(x, w, target, linear_bias=b), (x, w, b))
    thrice = torch.autograd.grad(-3.0 * F.linear_cross_entropy(x, w, target, linear_bias=b),
                                 (x, w, b))
    for one, three in zip(once, thrice):
        torch.testing.assert_close(three, -3.0 * one)


def test_no_gradient_work_without_grad(monkeypatch):
    """Under torch.no_grad (or with nothing requiring grad) no gradient buffer is made."""
    def refuse(*args):
        raise AssertionError("gradient buffers allocated")
    monkeypatch.setattr(lce, "_gradient_buffers", refuse)
    x, w, target, b = _problem(num_classes=37)
    with torch.no_grad():
        for reduction in ("mean", "none"):
            assert not F.linear_cross_entropy(x, w, target, linear_bias=b,
                                              reduction=reduction).requires_grad
    frozen = [t.detach() for t in (x, w, b)]
    F.linear_cross_entropy(frozen[0], frozen[1], target, linear_bias=frozen[2])


def test_second_backward_is_exact():
    """'mean'/'sum' gradients are scaled in place by the fused backward; a second backward
    through a retained graph differentiates the reference (fusedloss/_dispatch.py), exact after
    any first grad_output. 'none' keeps its inputs and recomputes."""
    x, w, target, b = _problem(num_classes=37)
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, 2 * first)
    x.grad = None
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b)
    loss.backward(torch.tensor(0.5, dtype=loss.dtype), retain_graph=True)
    loss.backward()
    torch.testing.assert_close(x.grad, 1.5 * first)
    x.grad = None
    per_token = F.linear_cross_entropy(x, w, target, linear_bias=b, reduction="none")
    per_token.sum().backward(retain_graph=True)
    first = x.grad.clone()
    per_token.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_return_lse(dtype):
    x, w, target, b = _problem(dtype=dtype)
    loss, lse = F.linear_cross_entropy(x, w, target, linear_bias=b, return_lse=True, softcap=2.0)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert lse.shape == target.shape and not lse.requires_grad
    logits = torch_F.linear(x.detach().double(), w.detach().double(), b.detach().double())
    torch.testing.assert_close(lse.double(), torch.logsumexp(2.0 * torch.tanh(logits / 2.0), 1),
                               rtol=1e-6 if dtype != torch.bfloat16 else 1e-2, atol=1e-6)
    loss.backward()  # lse is a side output: backward through the loss alone works
    assert_close_to_reference("linear_cross_entropy", x.detach().clone().requires_grad_(), w,
                              target, linear_bias=b, return_lse=True, z_loss=1e-3,
                              reduction="none")


def test_target_or_class_weight_requiring_grad_is_refused():
    x, w, target, _ = _problem(num_rows=3, num_classes=5)
    with pytest.raises(RuntimeError, match="not differentiable"):  # torch's error for a class weight
        F.linear_cross_entropy(x, w, target, weight=torch.ones(5, requires_grad=True))
