"""The shared backward of precomputed-gradient losses (triton_kernels/_precomputed_gradient.py) through the
interpreter: exact products, in place, nothing written when grad_output is exactly 1, and a
second backward through a retained graph exact or refused, never silently wrong (the catalog-wide
properties beyond the first backward are tests/test_training_step.py's)."""
import pytest
import torch

import fusedloss
from fusedloss import functional as F
from fusedloss.triton_kernels import _precomputed_gradient

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _gradient(numel, dtype):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(numel, generator=generator, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [0.5, -3.0, 0.0, 1.0 + 2 ** -10, float("inf"), float("nan")])
def test_scale_equals_torchs_product_in_place(dtype, value):
    grad = _gradient(2500, dtype)  # 3 programs, the last one partly masked
    expected = grad * torch.tensor(value, dtype=dtype)
    storage = grad.data_ptr()
    result = _precomputed_gradient.scale_in_place(grad, torch.tensor(value, dtype=dtype))
    assert result.data_ptr() == storage
    torch.testing.assert_close(result, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_leaves_every_bit_alone(dtype):
    grad = _gradient(1500, dtype)
    grad[7] = float("nan")
    before = grad.clone()
    result = _precomputed_gradient.scale_in_place(grad, torch.ones((), dtype=torch.float32))
    assert result.data_ptr() == grad.data_ptr()
    assert torch.equal(result.view(torch.uint8), before.view(torch.uint8))


@pytest.mark.parametrize("grad_output", [1.0 / 3.0, 65536.0])
def test_a_wider_grad_output_multiplies_in_float32_then_rounds_once(grad_output):
    # 65536 (a GradScaler's first scale, the grad_output of an autocast float32 loss) is inf in
    # float16, the product is not
    for dtype in (torch.bfloat16, torch.float16):
        grad = _gradient(100, dtype) * 1e-3
        wide = torch.tensor(grad_output, dtype=torch.float32)
        expected = (grad.float() * wide).to(dtype)
        for result in (_precomputed_gradient.scale_in_place(grad.clone(), wide),
                       _precomputed_gradient.scale_gradient(grad.clone(), wide, dtype)):
            assert result.dtype == dtype and torch.isfinite(result).all()
            torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_per_element_and_non_contiguous_gradients_scale_by_torch():
    grad = _gradient(60, torch.float32).view(6, 10)
    per_row = torch.linspace(-1, 2, 6).unsqueeze(1)
    torch.testing.assert_close(_precomputed_gradient.scale_in_place(grad.clone(), per_row), grad * per_row, rtol=0, atol=0)
    transposed = grad.clone().t()
    torch.testing.assert_close(_precomputed_gradient.scale_in_place(transposed, torch.tensor(2.0)), grad.t() * 2, rtol=0, atol=0)


def test_a_grad_output_wider_than_the_gradient_broadcasts_out_of_place():
    grad = _gradient(10, torch.float32)
    per_pair = torch.linspace(-1, 2, 3).view(3, 1)  # (10,) against (3, 1): a (3, 10) product
    torch.testing.assert_close(_precomputed_gradient.scale_in_place(grad.clone(), per_pair),
                               grad * per_pair, rtol=0, atol=0)


@pytest.mark.parametrize("shapes", [[(), ()], [(3, 1), (1, 4)], [(5,), (2, 1, 5), ()],
                                    [(0, 1), (1, 3)], [(0,), (1,)], [(2, 0), (2, 1)]])
def test_broadcast_shape_is_torchs(shapes):
    from fusedloss.triton_kernels._common import broadcast_shape
    shapes = [torch.Size(s) for s in shapes]
    assert broadcast_shape(*shapes) == torch.broadcast_shapes(*shapes)


@pytest.mark.parametrize("shapes", [[(3,), (4,)], [(2, 3), (3, 2)], [(0,), (2,)]])
def test_broadcast_shape_refuses_what_torch_refuses(shapes):
    from fusedloss.triton_kernels._common import broadcast_shape
    with pytest.raises(RuntimeError):
        torch.broadcast_shapes(*shapes)
    with pytest.raises(RuntimeError, match="cannot be broadcast"):
        broadcast_shape(*[torch.Size(s) for s in shapes])


def test_empty_gradient():
    grad = torch.empty(0, 5)
    assert _precomputed_gradient.scale_in_place(grad, torch.tensor(3.0)).shape == (0, 5)


def _losses():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1500, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 1500, (4,), generator=generator)
    x, y = torch.randn(300, generator=generator, dtype=torch.float64), torch.randn(300, generator=generator, dtype=torch.float64)
    return {"cross_entropy": (lambda z: F.cross_entropy(z, target, label_smoothing=0.1), logits),
            "mse_loss": (lambda z: F.mse_loss(z, y), x)}


@pytest.mark.parametrize("name", ["cross_entropy", "mse_loss"])
def test_backward_hands_the_forwards_buffer_to_grad(name):
    # the dispatcher's Function captured the sweep (no second Function, no nested run of
    # autograd's engine) and .grad takes the buffer the forward wrote, without a copy
    from fusedloss import _dispatch
    loss_fn, value = _losses()[name]
    leaf = value.clone().requires_grad_()
    loss = loss_fn(leaf)
    storage = _dispatch.kernel_node(loss).sweep.gradients[0].data_ptr()  # held, it would be copied
    loss.backward()
    assert leaf.grad.data_ptr() == storage


def test_a_tensor_passed_twice_gets_both_gradients_summed():
    x = torch.rand(50, dtype=torch.float64, requires_grad=True)  # input and target at once
    F.binary_cross_entropy_with_logits(x, x).backward()
    with fusedloss.use_backend("reference"):
        twin = x.detach().clone().requires_grad_()
        expected, = torch.autograd.grad(F.binary_cross_entropy_with_logits(twin, twin), twin)
    torch.testing.assert_close(x.grad, expected)  # sigmoid(x) - x from the input, -x from the target


def test_a_sweep_is_captured_only_over_distinct_leaves():
    leaves = [torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)]
    target = torch.randn(3)
    capture = _precomputed_gradient.SweepCapture(leaves)
    assert capture.takes([leaves[1], target, None, leaves[0]])
    assert capture.positions == [1, None, None, 0]
    assert not capture.takes([leaves[0], leaves[0]])  # one leaf twice: autograd sums the two
    assert not capture.takes([leaves[0] * 1])  # an input the kernel made from a leaf
    assert not capture.takes([torch.randn(3, requires_grad=True)])


def _mse_sweep(x, y):
    grad = (x - y).detach() * (2 / x.numel()) if x.requires_grad else None
    return _precomputed_gradient.Sweep(((x - y).square().mean(),), [grad, None])


def test_precomputed_gradient_takes_a_function_only_when_autograd_records_it():
    x, y = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert _precomputed_gradient.precomputed_gradient(_mse_sweep, x, y).grad_fn is None
    leaf = x.clone().requires_grad_()
    with torch.no_grad():
        assert _precomputed_gradient.precomputed_gradient(_mse_sweep, leaf, y).grad_fn is None
    loss = _precomputed_gradient.precomputed_gradient(_mse_sweep, leaf, y)
    assert type(loss.grad_fn).__name__ == "PrecomputedGradientBackward"
    loss.backward(torch.tensor(-2.0, dtype=torch.float64))
    torch.testing.assert_close(leaf.grad, -2.0 * 2 * (x - y) / 5, rtol=0, atol=1e-15)


def test_only_the_first_capturable_sweep_is_captured():
    leaf, y = torch.randn(5, dtype=torch.float64, requires_grad=True), torch.randn(5, dtype=torch.float64)
    with _precomputed_gradient.capturing([leaf]) as capture:
        declined = _precomputed_gradient.precomputed_gradient(_mse_sweep, leaf * 1, y)
        assert capture.sweep is None and declined.requires_grad  # recorded its own Function
        first = _precomputed_gradient.precomputed_gradient(_mse_sweep, leaf, y)
        second = _precomputed_gradient.precomputed_gradient(_mse_sweep, leaf, y)
    assert capture.sweep.outputs[0] is first and not first.requires_grad
    assert second.requires_grad
    grads = capture.gradients(torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(grads[0], 3.0 * 2 * (leaf.detach() - y) / 5, rtol=0, atol=1e-15)


def test_a_loss_whose_kernel_transforms_its_input_still_differentiates():
    # hsigmoid's (nodes, 1) bias is flattened before the sweep: not captured, recorded instead
    from fusedloss import _dispatch
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([0, 5, 2, 3])
    grads = {}
    for shape in ((5,), (5, 1)):
        bias = torch.linspace(-1, 1, 5, dtype=torch.float64).reshape(shape).requires_grad_()
        loss = F.hsigmoid_loss(x, label, 6, w, bias)
        captured = type(_dispatch.kernel_node(loss)).__name__ == "SweepCapture"
        assert captured == (len(shape) == 1)
        grads[len(shape)] = [g.reshape(-1) for g in torch.autograd.grad(loss, (x, w, bias))]
        with fusedloss.use_backend("reference"):
            expected = torch.autograd.grad(F.hsigmoid_loss(x, label, 6, w, bias), (x, w, bias))
        for got, want in zip(grads[len(shape)], expected):
            torch.testing.assert_close(got, want.reshape(-1))


@pytest.mark.parametrize("name", ["cross_entropy", "mse_loss"])
def test_second_backward_after_grad_output_one_is_exact(name):
    loss_fn, value = _losses()[name]
    ours, theirs = value.clone().requires_grad_(), value.clone().requires_grad_()
    loss = loss_fn(ours)
    loss.backward(retain_graph=True)
    loss.backward(torch.tensor(-2.5, dtype=loss.dtype))
    with fusedloss.use_backend("reference"):
        expected = torch.autograd.grad(loss_fn(theirs), theirs)[0] * (1 - 2.5)
    torch.testing.assert_close(ours.grad, expected)


def test_second_backward_of_an_inplace_loss_after_another_grad_output_raises():
    # elsewhere the dispatcher differentiates the reference for a second backward; the
    # overwritten logits leave nothing to recompute from
    logits = _losses()["cross_entropy"][1].clone().requires_grad_()
    loss = F.cross_entropy(logits * 1, torch.zeros(4, dtype=torch.long), inplace_backward=True)
    loss.backward(torch.tensor(3.0, dtype=loss.dtype), retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
