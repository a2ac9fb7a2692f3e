"""torch.compile(fullgraph=True) of every catalog loss, forward and backward: no graph break (a
break is an error under fullgraph) and eager's values and gradients, on both backends. The
kernels run inside the graph as fusedloss's custom ops (fusedloss/_ops.py); the reference is
traced as plain torch. aot_eager runs dynamo and AOT autograd (the forward and backward graphs)
without a C++ compiler; one Inductor case compiles cross entropy for real, and on CUDA a
captured CUDA graph replays a compiled loss."""
import functools
import re

import pytest
import torch
from hypothesis import Phase, find, settings
from torch._inductor.utils import run_and_get_code

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


@functools.lru_cache(maxsize=None)  # both backends' cases take the same call (each runs on copies)
def _first_usable_call(loss, device):
    """The first usable call the loss's own strategies draw (derandomized: the same each run)."""
    info = catalog.get(loss)
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
    call = _first_usable_call(loss, device)
    compiled = torch.compile(info.function, fullgraph=True, backend="aot_eager")
    with fusedloss.use_backend(backend):
        eager = run_with_gradients(info.function, call.args, call.kwargs, grad_seed=0)
        _assert_same(run_with_gradients(compiled, call.args, call.kwargs, grad_seed=0), eager, call)


def _logits_and_target(device, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=generator).to(device, dtype).requires_grad_()
    return logits, torch.randint(0, 40, (6,), generator=generator).to(device)


def _label_smoothed(logits, target):
    return F.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-3)


def _two_dtypes(logits32, logits16, target):
    return _label_smoothed(logits32, target), _label_smoothed(logits16, target)


def _backward_call(code):
    """The body of the compiled backward's `call` (Inductor's wrapper code)."""
    return code[code.index("def call("):code.index("runner = ")]


# Compiled afresh: the caches key a graph by its forward, so they would hand back a backward
# that fusedloss has since changed. Inductor's CPU code unvectorised: the probe of the vector
# ISAs starts a Python per ISA (about 35 s on torch 2.11, 2 cores); the test reads the wrapper
# code, and a product's bits do not depend on the vector width.
@torch._functorch.config.patch(enable_autograd_cache=False)
@torch._inductor.config.patch({"fx_graph_cache": False, "cpp.vec_isa_ok": False})
def test_inductor_scales_the_saved_gradient_in_place_with_eagers_bits(device):
    """The compiled backward of a fused loss is one pass that scales each saved gradient in its
    own buffer (Inductor reuses the donated buffer: nothing allocated, no copy; fusedloss/_ops.py
    says why this, and not a mutating scale op) and gives eager's bits at grad_output 1 and not
    1, in float32 and bfloat16. One compile covers both dtypes (Inductor's cost is seconds)."""
    (logits32, target), (logits16, _) = (_logits_and_target(device, d)
                                         for d in (torch.float32, torch.bfloat16))
    compiled = torch.compile(_two_dtypes, fullgraph=True)

    def values_and_gradients(function, grad_outputs):
        leaves = [logits32.detach().requires_grad_(), logits16.detach().requires_grad_()]
        losses = function(*leaves, target)
        grad_outputs = [torch.tensor(g, dtype=loss.dtype) for g, loss in zip(grad_outputs, losses)]
        return [*losses, *torch.autograd.grad(losses, leaves, grad_outputs)]

    # run_and_get_code resets dynamo and compiles; the second compiled call reuses its graphs
    eager = [values_and_gradients(_two_dtypes, g) for g in ((1.0, 3.0), (3.0, 1.0))]
    first, codes = run_and_get_code(values_and_gradients, compiled, (1.0, 3.0))
    for ours, theirs in zip([*first, *values_and_gradients(compiled, (3.0, 1.0))],
                            [*eager[0], *eager[1]]):
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    backward = _backward_call(codes[-1])
    kernels = re.findall(r"\b((?:cpp|triton)_\w*fused_\w+)(?:\.run)?\(", backward)
    assert len(kernels) == 1 and "_mul_" in kernels[0], backward  # both products in one pass
    assert backward.count("# reuse") == 2, backward  # each written into its saved gradient
    assert not re.search(r"empty_strided|copy|clone|torch\.ops\.", backward), backward


def test_first_compiled_call_compiles_once(device, monkeypatch):
    """A process whose first fused loss is a compiled one: tracing it must not fill the
    dispatcher's kernel table (a global written inside a trace makes dynamo recompile)."""
    from fusedloss import _dispatch
    monkeypatch.setattr(_dispatch, "_kernels", None)
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    logits, target = _logits_and_target(device)
    compiled = torch.compile(F.cross_entropy, fullgraph=True, backend="aot_eager")
    first, second = compiled(logits, target), compiled(logits, target)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert _dispatch._kernels is None


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
    # recorded by the CRF's first launch inside the op
    "crf tag": (F.crf_nll, lambda: (torch.randn(2, 3, 4), torch.tensor([[0, 1, 4], [2, 3, 1]]),
                                    torch.randn(4, 4), torch.randn(4), torch.randn(4)),
                "tags must be tag indices"),
    "crf first step": (F.crf_decode, lambda: (torch.randn(2, 3, 4), torch.randn(4, 4),
                                              torch.randn(4), torch.randn(4),
                                              torch.tensor([[1, 1, 0], [0, 1, 1]]).bool()),
                       "mask of the first timestep"),
}


@pytest.mark.cpu_tensors  # a failed device-side assert poisons a CUDA process
@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_raise_under_compile(case):
    function, arguments, message = BAD_VALUES[case]
    with pytest.raises(RuntimeError, match=message):
        torch.compile(function, fullgraph=True, backend="aot_eager")(*arguments())


@pytest.mark.parametrize("transform", ["grad", "vmap of grad"])
def test_compiled_torch_func_transform_matches_eager(transform, device):
    # inside a transform the reference runs, also while dynamo traces (no custom op, whose
    # fake tensors a transform's wrappers cannot enter)
    logits, target = _logits_and_target(device)

    def per_sample(row, label):
        return F.cross_entropy(row[None], label[None], label_smoothing=0.1)
    if transform == "grad":
        function = torch.func.grad(lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1))
    else:
        function = torch.func.vmap(torch.func.grad(per_sample))
    compiled = torch.compile(function, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits, target), function(logits, target))


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
