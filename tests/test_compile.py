"""torch.compile(fullgraph=True) of every catalog loss, forward and backward: no graph break (a
break is an error under fullgraph), and eager's values and gradients, on both backends. The
kernels run inside the graph as fusedloss's custom ops (fusedloss/_ops.py); the reference is
traced as plain torch. aot_eager runs dynamo and AOT autograd (the forward and backward
graphs) without a C++ compiler; one Inductor case compiles cross entropy for real."""
import warnings

import pytest
import torch
from hypothesis import Phase, assume, given, settings, strategies as st

import fusedloss
import fusedloss.functional as F
from fusedloss import catalog
from fusedloss.testing.compare import run_with_gradients

BACKENDS = ("triton", "reference")  # on the CPU, triton is the kernels through the interpreter


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles its own graphs and leaves no compiled code behind."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tensors(call):
    return [v for v in (*call.args, *call.kwargs.values()) if torch.is_tensor(v)]


def _assert_same(compiled, eager, call):
    (outputs, grads), (expected, expected_grads) = compiled, eager
    assert len(outputs) == len(expected) and len(grads) == len(expected_grads), call
    for ours, theirs in zip([*outputs, *grads], [*expected, *expected_grads]):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, call
        torch.testing.assert_close(ours, theirs, equal_nan=True, msg=lambda m: f"{call}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", catalog.NAMES)
@settings(max_examples=1, phases=[Phase.generate])  # no shrinking: each example compiles
@given(data=st.data())
def test_compiled_loss_matches_eager(loss, backend, data, device):
    info = catalog.get(loss)
    call = data.draw(info.valid_calls(torch.float32)).to(device)
    tensors = _tensors(call)
    # a call with something to compute and, but for Viterbi, something to differentiate
    assume(all(t.numel() for t in tensors))
    assume(loss == "crf_decode" or any(t.requires_grad for t in tensors))
    compiled = torch.compile(info.function, fullgraph=True, backend="aot_eager")
    with fusedloss.use_backend(backend):
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            eager = run_with_gradients(info.function, call.args, call.kwargs, grad_seed=0)
        # torch's deprecation and broadcasting warnings: dynamo cannot trace warnings.warn
        assume(not warned)
        _assert_same(run_with_gradients(compiled, call.args, call.kwargs, grad_seed=0), eager, call)


def _projected_cross_entropy(hidden, weight, target):
    return F.cross_entropy(hidden @ weight.t(), target, label_smoothing=0.1, z_loss=1e-3)


def _projected_inputs():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=generator)
    weight = torch.randn(40, 8, generator=generator, requires_grad=True)
    return hidden, weight, torch.randint(0, 40, (6,), generator=generator)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inductor_compiles_a_step_around_cross_entropy(backend):
    hidden, weight, target = _projected_inputs()
    compiled = torch.compile(_projected_cross_entropy, fullgraph=True)
    with fusedloss.use_backend(backend):
        eager = run_with_gradients(_projected_cross_entropy, (hidden, weight, target), {}, 0)
        _assert_same(run_with_gradients(compiled, (hidden, weight, target), {}, 0), eager, "ce")
