"""torch.compile(fullgraph=True) of every catalog loss, forward and backward: no graph break (a
break is an error under fullgraph) and eager's values and gradients, on both backends. The
kernels run inside the graph as fusedloss's custom ops (fusedloss/_ops.py); the reference is
traced as plain torch. aot_eager runs dynamo and AOT autograd (the forward and backward graphs)
without a C++ compiler; one Inductor case compiles cross entropy for real, and on CUDA a
captured CUDA graph replays a compiled loss."""
import warnings

import pytest
import torch
from hypothesis import Phase, find, settings

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


def _usable(info, call):
    """A call with something to compute, something to differentiate (Viterbi aside), and no
    warning: dynamo cannot trace warnings.warn (torch's deprecated size_average/reduce and a
    broadcasting target warn, in torch's losses as in these)."""
    tensors = [v for v in (*call.args, *call.kwargs.values()) if torch.is_tensor(v)]
    if not all(t.numel() for t in tensors):
        return False
    if info.name != "crf_decode" and not any(t.requires_grad for t in tensors):
        return False
    with warnings.catch_warnings(record=True) as warned, torch.no_grad():
        warnings.simplefilter("always")
        with fusedloss.use_backend("reference"):
            info.function(*call.args, **call.kwargs)
    return not warned


def _first_usable_call(info, device):
    """The first usable call the loss's own strategies draw (derandomized: the same each run)."""
    first = settings(database=None, derandomize=True, phases=[Phase.generate], deadline=None)
    return find(info.valid_calls(torch.float32), lambda call: _usable(info, call.to(device)),
                settings=first).to(device)


def _assert_same(compiled, eager, call):
    (outputs, grads), (expected, expected_grads) = compiled, eager
    assert len(outputs) == len(expected) and len(grads) == len(expected_grads), call
    for ours, theirs in zip([*outputs, *grads], [*expected, *expected_grads]):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, call
        torch.testing.assert_close(ours, theirs, equal_nan=True, msg=lambda m: f"{call}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", catalog.NAMES)
def test_compiled_loss_matches_eager(loss, backend, device):
    info = catalog.get(loss)
    call = _first_usable_call(info, device)
    compiled = torch.compile(info.function, fullgraph=True, backend="aot_eager")
    with fusedloss.use_backend(backend):
        eager = run_with_gradients(info.function, call.args, call.kwargs, grad_seed=0)
        _assert_same(run_with_gradients(compiled, call.args, call.kwargs, grad_seed=0), eager, call)
