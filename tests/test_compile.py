"""torch.compile(fullgraph=True) of every catalog loss, forward and backward: no graph break (a
break is an error under fullgraph) and eager's values and gradients, on both backends. The
kernels run inside the graph as fusedloss's custom ops (fusedloss/_ops.py); the reference is
traced as plain torch. aot_eager runs dynamo and AOT autograd (the forward and backward graphs)
without a C++ compiler; one Inductor case compiles cross entropy for real, and on CUDA a
captured CUDA graph replays a compiled loss."""
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


TINY = 128  # elements in all of a call's tensors: tracing cost grows with CTC's and CRF's steps


def _usable(info, call):
    """A tiny call with something to compute and, but for Viterbi, something to differentiate."""
    tensors = [v for v in (*call.args, *call.kwargs.values()) if torch.is_tensor(v)]
    return (all(t.numel() for t in tensors) and sum(t.numel() for t in tensors) <= TINY
            and (info.name == "crf_decode" or any(t.requires_grad for t in tensors)))


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


def _logits_and_target(device):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=generator).to(device).requires_grad_()
    return logits, torch.randint(0, 40, (6,), generator=generator).to(device)


def _label_smoothed(logits, target):
    return F.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-3)


def test_inductor_compiles_cross_entropy_with_eagers_values(device):
    logits, target = _logits_and_target(device)
    compiled = torch.compile(_label_smoothed, fullgraph=True)
    eager = run_with_gradients(_label_smoothed, (logits, target), {}, grad_seed=0)
    _assert_same(run_with_gradients(compiled, (logits, target), {}, grad_seed=0), eager, "inductor")


# Values only the device knows are checked in the graph while compiling; they raise when the
# graph runs, RuntimeError with the eager message (fusedloss._args.checks_on_host).
BAD_VALUES = {
    "class index": (F.cross_entropy, lambda: (torch.randn(3, 5), torch.tensor([0, 7, 1])),
                    "target out of bounds for 5 classes"),
    "probability": (F.binary_cross_entropy, lambda: (torch.tensor([0.5, 1.5]), torch.zeros(2)),
                    "between 0 and 1"),
    "input length": (F.ctc_loss, lambda: (torch.randn(5, 2, 4).log_softmax(-1),
                                          torch.tensor([[1, 2], [1, 1]]), torch.tensor([5, 9]),
                                          torch.tensor([2, 1])),
                     r"input_lengths to have values in \[0, 5\]"),
}


@pytest.mark.cpu_tensors  # a failed device-side assert poisons a CUDA process
@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_raise_under_compile(case):
    function, arguments, message = BAD_VALUES[case]
    with pytest.raises(RuntimeError, match=message):
        torch.compile(function, fullgraph=True, backend="aot_eager")(*arguments())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_captured_cuda_graph_replays_a_compiled_loss():
    logits, target = _logits_and_target("cuda")
    compiled = torch.compile(_label_smoothed, fullgraph=True, backend="aot_eager")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graph asks
        for _ in range(2):
            logits.grad = None
            compiled(logits, target).backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    logits.grad = None
    with torch.cuda.graph(graph):
        loss = compiled(logits, target)
        loss.backward()
    fresh_logits, fresh_target = _logits_and_target("cpu")
    with torch.no_grad():
        logits.copy_(torch.flip(fresh_logits, (0,)).cuda())
        target.copy_(torch.flip(fresh_target, (0,)).cuda())
    logits.grad.zero_()
    graph.replay()
    expected_logits = logits.detach().clone().requires_grad_()
    expected = _label_smoothed(expected_logits, target)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits.grad, expected_logits.grad)
