"""Differential tests of the elementwise and dice kernels (issue #6) against the float64 oracle.

Every case goes through the public fusedloss.functional function on the backend in force (the
kernels: CUDA, or the Triton interpreter on CPU) and through `fusedloss.testing.compare`, which
checks values and the gradients of every operand that requires grad (inputs, targets, weights)
after a random, never-all-ones grad_output. One table, CASES, says how to build the arguments of
each loss; every test below draws from it. (tests/conftest.py sets TRITON_INTERPRET=1 on a
machine without CUDA before triton is imported.)
"""
import warnings

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

import fusedloss.functional as F
from fusedloss import _args, _backend, _dispatch
from fusedloss.testing import assert_close_to_reference
from fusedloss.triton_kernels._common import ELEMENTWISE_BLOCK as BLOCK

DEVICE = "cuda" if torch.cuda.is_available() and not _backend.interpreting() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
REDUCTIONS = ["none", "mean", "sum"]

# The interpreter evaluates both sides of a tl.where and the masked-off lanes with numpy, which
# warns about log(0) and x/0 it then discards; torch warns about the broadcasting we test.
pytestmark = pytest.mark.filterwarnings("ignore:Using a target size:UserWarning")


class Maker:
    """Random tensors of one dtype on DEVICE from one seeded generator."""

    def __init__(self, dtype, seed=0):
        self.dtype, self.generator = dtype, torch.Generator().manual_seed(seed)

    def _leaf(self, t, grad):
        return t.to(DEVICE, self.dtype).requires_grad_(grad)

    def normal(self, shape, scale=1.0, grad=True):
        return self._leaf(torch.randn(shape, generator=self.generator, dtype=torch.float64) * scale, grad)

    def uniform(self, shape, low=0.0, high=1.0, grad=True):
        return self._leaf(low + (high - low) * torch.rand(shape, generator=self.generator, dtype=torch.float64), grad)

    def signs(self, shape):
        return self._leaf(torch.randint(0, 2, shape, generator=self.generator) * 2.0 - 1.0, False)

    def classes(self, shape, num_classes):
        return torch.randint(0, num_classes, shape, generator=self.generator).to(DEVICE)


def _last(shape):
    """A per-class shape (pos_weight's usual (C,)): broadcast by repeating, read in place."""
    return tuple(shape)[-1:]


def _first(shape):
    """A per-sample shape (N, 1, ...): broadcast along trailing dimensions, copied once."""
    return tuple(shape)[:1] + (1,) * max(len(shape) - 1, 0)


# loss -> builders (maker, shape) -> (args, kwargs); each builder is one configuration
CASES = {
    "binary_cross_entropy_with_logits": [
        lambda m, s: ((m.normal(s, 3), m.uniform(s)), {}),
        lambda m, s: ((m.normal(s, 3), m.uniform(s)), dict(weight=m.uniform(_last(s), 0.1, 2),
                                                           pos_weight=m.uniform(_last(s), 0.1, 3))),
        lambda m, s: ((m.normal(s, 3), m.uniform(s)), dict(weight=m.uniform(_first(s), 0.1, 2),
                                                           pos_weight=m.uniform(s, 0.1, 3, grad=False))),
    ],
    "binary_cross_entropy": [
        lambda m, s: ((m.uniform(s, 0.02, 0.98), m.uniform(s)), {}),
        lambda m, s: ((m.uniform(s, 0.02, 0.98), m.uniform(s)), dict(weight=m.uniform(_last(s), 0.1, 2))),
    ],
    "sigmoid_focal_loss": [
        lambda m, s: ((m.normal(s, 3), m.uniform(s)), {}),
        lambda m, s: ((m.normal(s, 3), m.uniform(s)), dict(alpha=-1.0, gamma=1.5)),
        lambda m, s: ((m.normal(s, 3), m.uniform(s)), dict(alpha=0.6, gamma=0.0)),
    ],
    "smooth_l1_loss": [
        lambda m, s: ((m.normal(s, 2), m.normal(s, 2)), {}),
        lambda m, s: ((m.normal(s, 2), m.normal(s, 2)), dict(beta=0.3)),
        lambda m, s: ((m.normal(s, 2), m.normal(s, 2)), dict(beta=0.0)),
    ],
    "huber_loss": [
        lambda m, s: ((m.normal(s, 2), m.normal(s, 2)), {}),
        lambda m, s: ((m.normal(s, 2), m.normal(s, 2)), dict(delta=0.5, weight=m.uniform(s, 0.1, 2))),
    ],
    "l1_loss": [
        lambda m, s: ((m.normal(s), m.normal(s)), {}),
        lambda m, s: ((m.normal(s), m.normal(s)), dict(weight=m.uniform(s, 0.1, 2))),
    ],
    "mse_loss": [
        lambda m, s: ((m.normal(s), m.normal(s)), {}),
        lambda m, s: ((m.normal(s), m.normal(s)), dict(weight=m.uniform(s, 0.1, 2))),
    ],
    "margin_ranking_loss": [
        lambda m, s: ((m.normal(s), m.normal(s), m.signs(s)), {}),
        lambda m, s: ((m.normal(s), m.normal(s), m.normal(s)), dict(margin=0.5)),
    ],
    "rank_loss": [
        lambda m, s: ((m.uniform(s), m.normal(s, 3), m.normal(s, 3)), {}),
    ],
    # dice: `s` is (N, ...) and 4 classes are appended
    "dice_loss": [
        lambda m, s: ((m.uniform((*s, 4)), m.classes((*s, 1), 4)), {}),
        lambda m, s: ((m.uniform((*s, 4)), m.classes((*s, 1), 4).to(torch.uint8)), dict(epsilon=0.5)),
    ],
}
LOSSES = sorted(CASES)
ALL_CONFIGS = [(name, i) for name in LOSSES for i in range(len(CASES[name]))]
# which positional operands may be broadcast against the others (a weight must match the input)
BROADCASTABLE = {"smooth_l1_loss": (1,), "huber_loss": (1,), "l1_loss": (1,), "mse_loss": (1,),
                 "margin_ranking_loss": (0, 1, 2), "rank_loss": (0, 1, 2)}


def build(name, config, shape, dtype, seed=0, reduction="mean"):
    if name == "dice_loss" and len(shape) == 0:
        shape = (2,)
    args, kwargs = CASES[name][config](Maker(dtype, seed), tuple(shape))
    return args, {**kwargs, "reduction": reduction}


def check(name, args, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_close_to_reference(name, *args, **kwargs)


def test_every_loss_has_a_kernel():
    for name in LOSSES:
        assert _dispatch.has_kernel(name), name


@pytest.mark.parametrize("name,config", ALL_CONFIGS)
def test_the_triton_backend_runs(name, config):
    """The result comes from the kernels' autograd.Function, not from the reference."""
    args, kwargs = build(name, config, (2, 3), torch.float32)
    loss = getattr(F, name)(*args, **kwargs)
    node = _dispatch.kernel_node(loss)  # a captured sweep, or a kernel's own autograd node
    assert getattr(node, "_forward_cls", type(node)).__module__.startswith("fusedloss.triton_kernels.")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,config", ALL_CONFIGS)
def test_matches_reference(name, config, dtype, reduction):
    check(name, *build(name, config, (3, 2, 5), dtype, reduction=reduction))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name,config", ALL_CONFIGS)
def test_more_than_one_block(name, config, reduction):
    """3000 elements: several programs (the interpreter's block is 1024) and a ragged last one,
    whose sums the last program to finish reduces (a weighted mean's weights too)."""
    shape = (3, 250) if name == "dice_loss" else (3, 1000)
    check(name, *build(name, config, shape, torch.float32, seed=1, reduction=reduction))


@st.composite
def cases(draw):
    name, config = draw(st.sampled_from(ALL_CONFIGS))
    min_dims = 1 if name == "dice_loss" else 0
    shape = draw(st.lists(st.integers(0, 5), min_size=min_dims, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    args, kwargs = build(name, config, shape, dtype, seed=draw(st.integers(0, 2**16)),
                         reduction=draw(st.sampled_from(REDUCTIONS)))
    sized = [d for d, n in enumerate(shape) if n > 1]
    # functional.py broadcasts these operands before dispatch, so autograd sums their gradients
    # after a per-element rounding to fp16/bf16, an error the tolerance rule does not scale with
    # (rank_loss has no torch twin to measure it): broadcast them in fp32/fp64 only
    if name in BROADCASTABLE and sized and dtype in (torch.float32, torch.float64) and draw(st.booleans()):
        # one operand keeps a single entry along a dimension and is broadcast back
        which, dim = draw(st.sampled_from(BROADCASTABLE[name])), draw(st.sampled_from(sized))
        operand = args[which]
        narrowed = operand.detach().narrow(dim, 0, 1).clone().requires_grad_(operand.requires_grad)
        args = args[:which] + (narrowed,) + args[which + 1:]
    return name, args, kwargs


@settings(max_examples=5 * settings.default.max_examples, deadline=None)  # the profile scales it
@given(cases())
def test_hypothesis(case):
    name, args, kwargs = case
    check(name, args, kwargs)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_empty_and_zero_dim(name, reduction):
    """Empty inputs (mean is nan as in torch) and 0-d inputs (dice needs (N, C): N = 0 instead)."""
    check(name, *build(name, 0, (0, 3), torch.float32, reduction=reduction))
    check(name, *build(name, 0, (0,) if name == "dice_loss" else (), torch.float32, reduction=reduction))


@pytest.mark.parametrize("name", LOSSES)
def test_non_contiguous(name):
    args, kwargs = build(name, 0, (6, 2, 5), torch.float32, reduction="none")
    # every tensor argument seen through a transposed (non-contiguous) view
    args = tuple(a.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(a.requires_grad)
                 if a.is_floating_point() else a.transpose(0, 1).contiguous().transpose(0, 1)
                 for a in args)
    assert not args[0].is_contiguous()
    check(name, args, kwargs)


@pytest.mark.parametrize("name", ["binary_cross_entropy_with_logits", "sigmoid_focal_loss", "rank_loss"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_logits(name, dtype):
    """Logits of +-100 and +-30: log-sigmoid and softplus must neither overflow nor cancel."""
    values = torch.tensor([-100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0])
    x = values.repeat_interleave(3).to(DEVICE, dtype).requires_grad_()
    y = torch.tensor([0.0, 1.0, 0.3]).repeat(7).to(DEVICE, dtype).requires_grad_()
    for reduction in REDUCTIONS:
        if name == "rank_loss":
            check(name, (y, x, -x.detach().clone().requires_grad_()), dict(reduction=reduction))
        else:
            check(name, (x, y), dict(reduction=reduction))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_bce_probabilities_exactly_zero_and_one(dtype):
    """Logs clamp at -100. The oracle's autograd gives nan at p in {0, 1} (0/0 through the
    clamp), so the input gradient is checked against torch's (p - y) / max(p(1 - p), 1e-12);
    values and the target gradient against the oracle."""
    p = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 1e-30], dtype=dtype, device=DEVICE)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.3, 1.0], dtype=dtype, device=DEVICE)
    w = torch.linspace(0.5, 2.0, 6, dtype=dtype, device=DEVICE)
    for reduction in REDUCTIONS:
        check("binary_cross_entropy", (p, y.clone().requires_grad_()), dict(weight=w, reduction=reduction))
        ours_p, torch_p = p.clone().requires_grad_(), p.clone().requires_grad_()
        ours = F.binary_cross_entropy(ours_p, y, weight=w, reduction=reduction)
        theirs = TF.binary_cross_entropy(torch_p, y, weight=w, reduction=reduction)
        torch.testing.assert_close(ours, theirs)
        grad_output = torch.rand_like(theirs) + 0.5
        ours.backward(grad_output)
        theirs.backward(grad_output)
        torch.testing.assert_close(ours_p.grad, torch_p.grad, rtol=1e-5, atol=0)


def test_smooth_l1_beta_zero_and_ties():
    """beta = 0 is L1 and d = 0 has gradient 0 (sign(0)); |d| == beta takes the linear branch."""
    x = torch.tensor([0.0, 1.0, -2.0, 0.5, 0.25], device=DEVICE, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0], device=DEVICE, requires_grad=True)
    for beta in (0.0, 0.5):
        for reduction in REDUCTIONS:
            check("smooth_l1_loss", (x, y), dict(beta=beta, reduction=reduction))
            check("huber_loss", (x, y), dict(delta=beta or 1.0, reduction=reduction))
            check("l1_loss", (x, y), dict(reduction=reduction))


def test_margin_ranking_at_the_hinge():
    """At -y (x1 - x2) + margin == 0 the gradient flows, as through torch's clamp_min."""
    x1 = torch.tensor([1.0, 2.0, 0.5], device=DEVICE, requires_grad=True)
    x2 = torch.tensor([1.0, 1.5, 1.0], device=DEVICE, requires_grad=True)
    y = torch.tensor([1.0, 1.0, -1.0], device=DEVICE, requires_grad=True)
    for margin in (0.0, 0.5):
        check("margin_ranking_loss", (x1, x2, y), dict(margin=margin, reduction="none"))


@pytest.mark.parametrize("legacy", [dict(size_average=False), dict(reduce=False), dict(size_average=True, reduce=True)])
@pytest.mark.parametrize("name", ["binary_cross_entropy_with_logits", "binary_cross_entropy", "smooth_l1_loss",
                                  "l1_loss", "mse_loss", "margin_ranking_loss"])
def test_deprecated_size_average_and_reduce(name, legacy):
    args, kwargs = build(name, 0, (4, 3), torch.float32)
    del kwargs["reduction"]
    with pytest.warns(UserWarning, match="size_average and reduce"):
        check(name, args, {**kwargs, **legacy})


@pytest.fixture
def launches(kernel_launches):
    """The constexpr flags of every launch of the generic elementwise kernel."""
    from fusedloss.triton_kernels import _elementwise as elementwise
    return kernel_launches(elementwise, "_elementwise_loss_kernel")


def test_gradients_written_only_when_due(launches):
    """A gradient is computed for exactly the operands that will receive one: not for a target
    without requires_grad, and for none under no_grad (an evaluation loop)."""
    x = torch.randn(10, device=DEVICE, requires_grad=True)
    y = torch.randn(10, device=DEVICE)
    F.mse_loss(x, y)
    with torch.no_grad():
        F.mse_loss(x, y)
    flags = [tuple(launch[f"GRAD_{k}"] for k in "ABCW") for launch in launches]
    assert flags == [(True, False, False, False), (False, False, False, False)]


def test_without_gradients():
    """Nothing requires grad (inference): values only, no autograd graph."""
    x, y = torch.randn(3000, device=DEVICE), torch.rand(3000, device=DEVICE)
    check("binary_cross_entropy_with_logits", (x, y), {})
    assert F.binary_cross_entropy_with_logits(x, y).grad_fn is None


@pytest.mark.parametrize("name", LOSSES)
def test_deterministic(name):
    """Two runs give the same bits: values and every gradient (no atomics anywhere)."""
    def run():
        args, kwargs = build(name, 0, (3, 1000), torch.float32, seed=3, reduction="mean")
        loss = getattr(F, name)(*args, **kwargs)
        leaves = [a for a in args if a.requires_grad]
        return [loss.detach(), *torch.autograd.grad(loss * 1.5, leaves)]

    def bits(t):
        return t.reshape(-1).contiguous().view(torch.uint8)

    for first, second in zip(run(), run()):
        assert torch.equal(bits(first), bits(second))


def test_grad_output_is_read_not_assumed():
    """A loss used inside a larger graph: the backward scales by the real grad_output."""
    x = torch.randn(50, device=DEVICE, requires_grad=True)
    y = torch.randn(50, device=DEVICE)
    (F.mse_loss(x, y) * 3.0).backward()
    torch.testing.assert_close(x.grad, 3.0 * 2 * (x - y).detach() / 50)


BAD_PROBABILITIES = [float("nan"), -0.1, -1e-3, 1.1]
RANGE_ERROR = "^all elements of input should be between 0 and 1$"


@pytest.mark.cpu_tensors
@pytest.mark.parametrize("bad", BAD_PROBABILITIES, ids=str)
def test_bce_refuses_what_torch_refuses(bad, launches):
    """The CPU's one-pass (aminmax) probability check raises torch's error, NaN included, before
    any launch."""
    target = torch.tensor([0.0, 1.0, 0.5])
    for fn in (TF.binary_cross_entropy, F.binary_cross_entropy):
        with pytest.raises(RuntimeError, match=RANGE_ERROR):
            fn(torch.tensor([0.5, bad, 0.25]), target)
    assert launches == []


def refused_by_the_kernel(test):
    """A test of bad input refused by the kernel's queued check: on CPU tensors (a failed device
    assert poisons a CUDA process), which run the kernels only through the interpreter, whose
    numpy warns about the logs of bad values."""
    test = pytest.mark.cpu_tensors(test)
    test = pytest.mark.filterwarnings("ignore::RuntimeWarning")(test)
    return pytest.mark.skipif(not _backend.interpreting(),
                              reason="CPU tensors run the kernels through the interpreter only")(test)


@refused_by_the_kernel
@pytest.mark.parametrize("bad", BAD_PROBABILITIES, ids=str)
def test_bce_check_queued_by_its_kernel_fires_in_any_block(bad, launches):
    """On the device path (CUDA, compiled graphs) no check runs before the kernel: its flags
    refuse a bad probability in a middle program and in the ragged last one, with torch's message."""
    n = 3 * BLOCK + 5
    for position in (BLOCK + 7, n - 1):
        p = torch.full((n,), 0.5)
        p[position] = bad
        launches.clear()
        with _args.checks_queued_as_on_cuda(), pytest.raises(RuntimeError, match=RANGE_ERROR):
            F.binary_cross_entropy(p.requires_grad_(), torch.zeros(n))
        assert [launch["A_IN_UNIT"] for launch in launches] == [True]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_check_in_its_kernel_changes_no_bit(reduction, launches):
    """Good probabilities, 0 and 1 exactly among them, over several programs: the flagged kernel
    passes them and gives the unflagged one's loss and gradients bit for bit."""
    from fusedloss.triton_kernels import binary
    maker = Maker(torch.float32, seed=4)
    p, y = maker.uniform((3 * BLOCK + 5,), grad=False), maker.uniform((3 * BLOCK + 5,), grad=False)
    p[0], p[BLOCK + 1], p[-1] = 0.0, 1.0, 1.0
    weight = maker.uniform(p.shape, 0.5, 2.0, grad=False)
    runs = []
    for queued in (None, "all elements of input should be between 0 and 1"):
        leaves = [p.clone().requires_grad_(), y.clone().requires_grad_()]
        loss = binary.binary_cross_entropy(*leaves, weight=weight, reduction=reduction,
                                           queued_range_error=queued)
        grad_output = torch.linspace(0.5, 1.5, loss.numel(), device=DEVICE).reshape(loss.shape)
        runs.append([loss.detach(), *torch.autograd.grad(loss, leaves, grad_output)])
    assert [launch["A_IN_UNIT"] for launch in launches] == [False, True]
    for unflagged, flagged in zip(*runs):
        assert torch.equal(unflagged, flagged)


def test_only_bce_on_probabilities_compiles_the_range_check(launches):
    with _args.checks_queued_as_on_cuda():
        for name in LOSSES:
            launches.clear()
            args, kwargs = build(name, 0, (2, 3), torch.float32)
            getattr(F, name)(*args, **kwargs)
            assert launches or name == "dice_loss", name  # dice has a kernel of its own
            assert all(launch["A_IN_UNIT"] == (name == "binary_cross_entropy")
                       for launch in launches), name


@refused_by_the_kernel
def test_compiled_bce_checks_in_its_kernel_alone(launches):
    """Traced, the call queues no check of its own: the graph holds the loss's op, whose kernel
    (run when the graph runs) records the check and refuses the bad probability."""
    graphs = []

    def keep_graph(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    try:
        compiled = torch.compile(F.binary_cross_entropy, fullgraph=True, backend=keep_graph)
        with pytest.raises(RuntimeError, match=RANGE_ERROR):
            compiled(torch.tensor([0.5, 1.5]), torch.zeros(2))
    finally:
        torch._dynamo.reset()
    targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert "fusedloss.binary_cross_entropy.default" in targets, targets
    assert not any("assert" in target for target in targets), targets
    assert [launch["A_IN_UNIT"] for launch in launches] == [True]


def test_dice_sums_kernel_records_the_label_check_on_cudas_path(monkeypatch):
    """With the checks queued as on CUDA, the sums launch records the labels' range check as it
    reads them (the host's queueing by torch ops is never reached): a label out of range raises
    the check's RuntimeError, labels in range give the host path's values bit for bit."""
    def queued_by_torch_ops(*args):
        raise AssertionError("the check was queued by torch ops, not recorded by the kernel")
    maker = Maker(torch.float32, seed=4)
    x, label = maker.uniform((3, 5, 4), grad=False), maker.classes((3, 5, 1), 4)
    expected = F.dice_loss(x, label, reduction="none")
    monkeypatch.setattr(_args, "_queue_check", queued_by_torch_ops)
    with _args.checks_queued_as_on_cuda():
        assert torch.equal(F.dice_loss(x, label, reduction="none"), expected)
        for bad in (-1, 4, 2 ** 32 + 1):  # the last is a class if narrowed to 32 bits
            wrong = label.clone()
            wrong[1, 2, 0] = bad
            with pytest.raises(RuntimeError, match="out of bounds"):
                F.dice_loss(x, wrong)


def test_dice_per_sample_backward_reads_grad_output_by_stride():
    # loss.sum().backward() hands 'none' an expanded grad_output (stride 0): the gradient kernel
    # reads it by its stride; the truth is 'sum', bit for bit
    maker = Maker(torch.float64, seed=5)
    x, label = maker.uniform((3, 5, 4)), maker.classes((3, 5, 1), 4)
    summed, = torch.autograd.grad(F.dice_loss(x, label, reduction="none").sum(), x)
    expected, = torch.autograd.grad(F.dice_loss(x, label, reduction="sum"), x)
    assert torch.equal(summed, expected)


@pytest.mark.parametrize("shape", [(33, 3, 4), (2, 9000, 4)])
def test_dice_finish_sums_every_sample_and_tile(shape):
    # the one finishing program steps over 32 samples and 32 tiles a time: 33 samples take two
    # steps of samples, 9000 rows (36 tiles of 256 in the interpreter) two steps of tiles
    maker = Maker(torch.float32, seed=6)
    args = (maker.uniform(shape), maker.classes((*shape[:-1], 1), shape[-1]))
    for reduction in ("none", "mean"):
        check("dice_loss", args, dict(reduction=reduction))
