"""What a real training step asks of every fused loss beyond its value and gradient, one
parametrised test over the catalog per property: the in-place option never yields a silently
wrong number; under autocast the loss comes back in torch's dtype on both backends and an fp16
GradScaler step goes through; double backward, a second backward and forward mode equal
torch's; torch.func's transforms (vmap of grad: per-sample gradients; jvp) equal the kernels'
eager autograd; activation checkpointing (both of torch's modes) changes no gradient; batched
grad_outputs (is_grads_batched) give one backward's gradients each."""
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import fusedloss
import fusedloss.functional as F
from fusedloss import catalog
from fusedloss.testing.compare import run_with_gradients
from fusedloss.testing.twins import torch_function

AUTOCAST_EXAMPLES = 1  # per loss: the property is about dtypes, not about values


def _for_each_loss(examples, names=catalog.NAMES):
    """The test once per catalog loss, each with `examples` calls drawn by its strategies."""
    def decorate(test):
        drawn = given(data=st.data())(test)
        return pytest.mark.parametrize("loss", names)(settings(max_examples=examples)(drawn))
    return decorate


# crf_decode (Viterbi) is never differentiated: its calls draw no tensor that requires grad
DIFFERENTIATED = tuple(name for name in catalog.NAMES if name != "crf_decode")


def _projected_logits():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=generator)
    weight = torch.randn(40, 8, generator=generator, requires_grad=True)
    target = torch.randint(0, 40, (6,), generator=generator)
    return hidden, weight, target


# --- inplace_backward ----------------------------------------------------------------------

@pytest.mark.parametrize("regulariser_first", [False, True])
def test_logits_used_beside_an_inplace_loss_raise(regulariser_first):
    hidden, weight, target = _projected_logits()
    logits = hidden @ weight.t()
    regulariser = (logits ** 2).mean() if regulariser_first else None
    loss = F.cross_entropy(logits, target, inplace_backward=True)
    if regulariser is None:
        regulariser = (logits ** 2).mean()  # reads the gradient now in the logits' storage
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + regulariser).backward()


def test_inplace_loss_alone_keeps_torchs_gradient():
    hidden, weight, target = _projected_logits()
    loss, lse = F.cross_entropy(hidden @ weight.t(), target, inplace_backward=True,
                                return_lse=True)
    loss.backward()
    expected = weight.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(hidden @ expected.t(), target).backward()
    torch.testing.assert_close(weight.grad, expected.grad)
    torch.testing.assert_close(lse, torch.logsumexp(hidden @ expected.detach().t(), 1))


# --- autocast ------------------------------------------------------------------------------

def _twin_under_autocast(info, kwargs):
    """torch's loss whose autocast dtype fusedloss follows, or None. torch 2.13's new `weight`
    of the pointwise losses is a composition of elementwise ops outside autocast's float32 list
    (a 16-bit result); fusedloss keeps the float32 of the unweighted loss there."""
    if any(kwargs.get(key, default) != default for key, default in info.extras.items()):
        return None
    if info.family == "pointwise" and kwargs.get("weight") is not None:
        return None
    return info.composition or (torch_function(info.twin) if info.twin else None)


@_for_each_loss(examples=AUTOCAST_EXAMPLES)
def test_autocast_returns_torchs_dtype_on_both_backends(loss, data, device):
    info = catalog.get(loss)
    call = data.draw(info.valid_calls(torch.bfloat16)).to(device)
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16):
        outputs, grads = run_with_gradients(info.function, call.args, call.kwargs, grad_seed=0)
        with fusedloss.use_backend("reference"):
            expected, expected_grads = run_with_gradients(info.function, call.args, call.kwargs,
                                                          grad_seed=0)
        twin = _twin_under_autocast(info, call.kwargs)
        twin_loss = twin(*call.args, **call.kwargs) if twin is not None else None
    floating = [o for o in outputs if torch.is_tensor(o) and o.is_floating_point()]
    assert floating and all(o.dtype == torch.float32 for o in floating), call
    if twin_loss is not None:
        assert twin_loss.dtype == outputs[0].dtype, call
    for ours, theirs in zip(outputs, expected):
        assert ours.dtype == theirs.dtype, call
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, equal_nan=True)
    leaves = [a for a in (*call.args, *call.kwargs.values()) if torch.is_tensor(a) and a.requires_grad]
    for leaf, ours, theirs in zip(leaves, grads, expected_grads):
        assert ours.dtype == theirs.dtype == leaf.dtype, call
        torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2, equal_nan=True)


def _scaled_step(loss_fn, functional):
    """One fp16 GradScaler step of a tiny linear model (initial scale 65536, the default):
    (whether the step was taken, the updated weight)."""
    hidden, weight, target = _projected_logits()
    weight = weight.detach().clone().requires_grad_()
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = loss_fn(functional, hidden, weight, target)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scale = scaler.get_scale()
    scaler.update()
    return scaler.get_scale() == scale, weight.detach(), loss.dtype


GRAD_SCALER_LOSSES = {
    "cross_entropy": lambda F, h, w, t: F.cross_entropy(h @ w.t(), t),
    "linear_cross_entropy": lambda F, h, w, t: F.linear_cross_entropy(h, w, t),
    "mse_loss": lambda F, h, w, t: F.mse_loss(h @ w.t(), torch.zeros(6, 40)),
}


@pytest.mark.cpu_tensors  # torch's GradScaler on the CPU
@pytest.mark.parametrize("loss", GRAD_SCALER_LOSSES)
def test_fp16_grad_scaler_step_is_taken_where_torchs_is(loss):
    from fusedloss.testing.twins import torch_function

    class Torch:  # torch's functions under fusedloss's names
        def __getattr__(self, name):
            return torch_function(name)
    taken, weight, dtype = _scaled_step(GRAD_SCALER_LOSSES[loss], F)
    torch_taken, torch_weight, torch_dtype = _scaled_step(GRAD_SCALER_LOSSES[loss], Torch())
    assert torch_taken and taken
    assert dtype == torch_dtype == torch.float32
    torch.testing.assert_close(weight, torch_weight, rtol=1e-3, atol=1e-3)


# --- derivatives beyond the first backward -------------------------------------------------

DERIVATIVE_EXAMPLES = 1  # per loss and property, float64 (CI time: 1-5 s a call through the interpreter)


def _drawn(loss, data, device):
    """A float64 call of `loss`: (its catalog entry, the call, the tensors requiring grad)."""
    info = catalog.get(loss)
    call = data.draw(info.valid_calls(torch.float64)).to(device)
    leaves = [a for a in (*call.args, *call.kwargs.values()) if torch.is_tensor(a) and a.requires_grad]
    return info, call, leaves


def _overwrites_its_logits(call):
    """inplace_backward=True keeps nothing to differentiate again: it must refuse, clearly."""
    return call.kwargs.get("inplace_backward", False)


def _or_reference(compute, info, call):
    """compute(torch's loss), or compute(the reference) where torch lacks that derivative (its
    CTC has neither a second derivative nor forward mode)."""
    try:
        return compute(_truth(info, call))
    except (RuntimeError, NotImplementedError) as error:
        if "not implemented" not in str(error) and "not support" not in str(error):
            raise
        return compute(_reference_of(info))


def _truth(info, call):
    """torch's own loss where it has one (double-differentiable), else the reference."""
    twin = _twin_under_autocast(info, call.kwargs)
    if twin is not None and not info.twin_gradient_differs:
        return twin
    return _reference_of(info)


def _reference_of(info):
    def reference(*args, **kwargs):
        with fusedloss.use_backend("reference"):
            return info.function(*args, **kwargs)
    return reference


def _first_output(result):
    return result[0] if isinstance(result, tuple) else result


def _seeded_like(tensors, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for t in tensors]


def _hessian_vector_product(fn, call, leaves, seed):
    """Leaves' gradients of <d loss / d leaves, v> for a seeded v, through create_graph=True."""
    loss = _first_output(fn(*call.args, **call.kwargs))
    (grad_output,) = _seeded_like([loss], seed)
    grads = torch.autograd.grad(loss, leaves, grad_output, create_graph=True, allow_unused=True)
    pairs = [(g, v) for g, v in zip(grads, _seeded_like(leaves, seed + 1)) if g is not None and g.requires_grad]
    if not pairs:
        return [torch.zeros_like(leaf) for leaf in leaves]
    second = torch.autograd.grad([g for g, _ in pairs], leaves, [v for _, v in pairs], allow_unused=True)
    return [torch.zeros_like(leaf) if s is None else s for leaf, s in zip(leaves, second)]


@_for_each_loss(examples=DERIVATIVE_EXAMPLES, names=DIFFERENTIATED)
def test_double_backward_equals_torchs(loss, data, device):
    info, call, leaves = _drawn(loss, data, device)
    assume(leaves)  # a call with nothing to differentiate proves nothing: draw another
    if _overwrites_its_logits(call):
        with pytest.raises(RuntimeError, match="inplace_backward=True is not supported"):
            _hessian_vector_product(info.function, call, leaves, seed=1)
        return
    ours = _hessian_vector_product(info.function, call, leaves, seed=1)
    theirs = _or_reference(lambda fn: _hessian_vector_product(fn, call, leaves, seed=1), info, call)
    for mine, truth in zip(ours, theirs):
        torch.testing.assert_close(mine, truth, rtol=1e-6, atol=1e-8, equal_nan=True, msg=repr(call))


@_for_each_loss(examples=DERIVATIVE_EXAMPLES, names=DIFFERENTIATED)
def test_second_backward_through_a_retained_graph_is_exact(loss, data, device):
    info, call, leaves = _drawn(loss, data, device)
    loss_value = _first_output(info.function(*call.args, **call.kwargs))
    assume(leaves and loss_value.requires_grad)
    first, second = _seeded_like([loss_value, loss_value], seed=2)
    loss_value.backward(first, retain_graph=True)
    if _overwrites_its_logits(call):
        with pytest.raises(RuntimeError, match="second backward"):
            loss_value.backward(second)
        return
    loss_value.backward(second)
    expected = _first_output(_truth(info, call)(*call.args, **call.kwargs))
    expected_grads = torch.autograd.grad(expected, leaves, first + second, allow_unused=True)
    for leaf, truth in zip(leaves, expected_grads):
        # the twice-accumulated .grad; `truth` is torch's for the summed grad_output
        torch.testing.assert_close(leaf.grad, torch.zeros_like(leaf) if truth is None else truth,
                                   rtol=1e-6, atol=1e-8, equal_nan=True, msg=repr(call))


@_for_each_loss(examples=DERIVATIVE_EXAMPLES, names=DIFFERENTIATED)
def test_forward_mode_equals_torchs(loss, data, device):
    info, call, leaves = _drawn(loss, data, device)
    assume(leaves)  # a call with nothing to differentiate proves nothing: draw another
    tangents = _seeded_like(leaves, seed=3)

    def tangent_of(fn):
        with torch.autograd.forward_ad.dual_level():
            duals = {id(leaf): torch.autograd.forward_ad.make_dual(leaf.detach(), t)
                     for leaf, t in zip(leaves, tangents)}
            args, kwargs = ([duals.get(id(a), a) for a in call.args],
                            {k: duals.get(id(v), v) for k, v in call.kwargs.items()})
            loss = _first_output(fn(*args, **kwargs))
            tangent = torch.autograd.forward_ad.unpack_dual(loss).tangent
        return torch.zeros_like(loss) if tangent is None else tangent
    if _overwrites_its_logits(call):
        with pytest.raises(NotImplementedError, match="jvp"):
            tangent_of(info.function)
        return
    torch.testing.assert_close(tangent_of(info.function), _or_reference(tangent_of, info, call),
                               rtol=1e-6, atol=1e-8, equal_nan=True, msg=repr(call))


# --- torch.func ----------------------------------------------------------------------------

def _tensors(call):
    """The call's tensors in argument order (what _with_tensors puts back)."""
    return [t for t in (*call.args, *call.kwargs.values()) if torch.is_tensor(t)]


def _with_tensors(call, tensors):
    """(args, kwargs) of `call` with its tensors replaced, in order, by `tensors`."""
    replacements = iter(tensors)
    args = [next(replacements) if torch.is_tensor(a) else a for a in call.args]
    kwargs = {k: next(replacements) if torch.is_tensor(v) else v for k, v in call.kwargs.items()}
    return args, kwargs


def _summed_loss(info, call):
    """The call's loss output summed, as a function of all its tensors in order."""
    def summed(*tensors):
        args, kwargs = _with_tensors(call, tensors)
        return _first_output(info.function(*args, **kwargs)).sum()
    return summed


def _second_example(tensor):
    """Another example for vmap: a differentiable tensor moved (0.5 x + 0.1 stays inside every
    loss's domain: probabilities, logits, emissions), anything else as it is."""
    return tensor.detach() * 0.5 + 0.1 if tensor.requires_grad else tensor


@_for_each_loss(examples=DERIVATIVE_EXAMPLES, names=DIFFERENTIATED)
def test_torch_func_transforms_equal_eager_kernels(loss, data, device):
    """vmap(grad) over a batch of two calls (every tensor mapped: targets, lengths, weights)
    gives each call's value and gradients as the kernels give them in eager autograd, and
    torch.func.jvp gives the eager gradient's inner product with the tangent."""
    info, call, leaves = _drawn(loss, data, device)
    assume(leaves)
    tensors = _tensors(call)
    positions = tuple(i for i, t in enumerate(tensors) if t.requires_grad)
    examples = [[t.detach() for t in tensors], [_second_example(t).detach() for t in tensors]]

    def eager(example):
        copies = [t.clone().requires_grad_(i in positions) for i, t in enumerate(example)]
        value = _summed_loss(info, call)(*copies)
        grads = torch.autograd.grad(value, [copies[i] for i in positions], allow_unused=True)
        return value.detach(), [torch.zeros_like(example[i]) if g is None else g
                                for i, g in zip(positions, grads)]
    stacked = [torch.stack(pair) for pair in zip(*examples)]
    grads, values = torch.func.vmap(torch.func.grad_and_value(_summed_loss(info, call),
                                                              argnums=positions))(*stacked)
    for b, example in enumerate(examples):
        value, expected = eager(example)
        torch.testing.assert_close(values[b], value, rtol=1e-6, atol=1e-8, equal_nan=True,
                                   msg=repr(call))
        for grad, truth in zip(grads, expected):
            torch.testing.assert_close(grad[b], truth, rtol=1e-6, atol=1e-8, equal_nan=True,
                                       msg=repr(call))

    tangents = _seeded_like([examples[0][i] for i in positions], seed=4)
    primals = examples[0]
    _, tangent = torch.func.jvp(
        lambda *moving: _summed_loss(info, call)(*_replaced(primals, positions, moving)),
        tuple(primals[i] for i in positions), tuple(tangents))
    value, expected = eager(primals)
    # d loss = Re <conj(grad), dx>: torch's gradient of a real loss of complex inputs is conjugate
    inner = sum((g.conj() * t).real.double().sum() for g, t in zip(expected, tangents))
    # a 'mean' over nothing: torch's tangent is 0/0 like the value, its gradient 0
    inner = torch.where(value.isnan(), value.double(), inner)
    torch.testing.assert_close(tangent.double(), inner, rtol=1e-6, atol=1e-8, equal_nan=True,
                               msg=repr(call))


def _replaced(tensors, positions, moving):
    tensors = list(tensors)
    for i, t in zip(positions, moving):
        tensors[i] = t
    return tensors


def test_per_sample_gradients_of_a_model_equal_eager_ones(device):
    """The per-sample-gradient recipe (functional_call, then vmap of grad over the batch) with
    fusedloss.nn.CrossEntropyLoss gives every example's parameter gradients as an eager backward
    through the kernel does, one example at a time."""
    generator = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 11))
    model = model.double().to(device)
    inputs = torch.randn(4, 6, generator=generator, dtype=torch.float64).to(device)
    targets = torch.tensor([3, 0, 10, -100], device=device)
    criterion = fusedloss.nn.CrossEntropyLoss(label_smoothing=0.1)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def example_loss(params, x, t):
        logits = torch.func.functional_call(model, params, (x.unsqueeze(0),))
        return criterion(logits, t.unsqueeze(0))
    per_sample = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0, 0))(
        params, inputs, targets)
    for b in range(len(targets)):
        model.zero_grad()
        criterion(model(inputs[b:b + 1]), targets[b:b + 1]).backward()
        for name, p in model.named_parameters():
            # the ignored example's loss is 0/0: NaN gradients in torch's and in eager ours
            torch.testing.assert_close(per_sample[name][b], p.grad, rtol=1e-6, atol=1e-8,
                                       equal_nan=True, msg=name)


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy_with_logits",
                                  "mse_loss", "nll_loss"])
def test_forward_mode_of_an_empty_mean_is_torchs_nan(loss):
    """The 'mean' of no elements is 0/0 in value and in tangent, as torch computes both."""
    empty = torch.zeros(0, 5, dtype=torch.float64)
    other = torch.zeros(0, dtype=torch.long) if loss in ("cross_entropy", "nll_loss") else empty

    def tangent_of(fn):
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(empty, torch.ones_like(empty))
            return torch.autograd.forward_ad.unpack_dual(fn(dual, other)).tangent
    ours, torchs = tangent_of(getattr(F, loss)), tangent_of(torch_function(loss))
    assert torch.isnan(torchs) and torch.isnan(ours), (ours, torchs)


# --- activation checkpointing ----------------------------------------------------------------

@pytest.mark.parametrize("reentrant", [False, True])
@_for_each_loss(examples=DERIVATIVE_EXAMPLES, names=DIFFERENTIATED)
def test_checkpointed_loss_gives_the_plain_gradients(loss, data, device, reentrant):
    """torch.utils.checkpoint reruns the loss's forward in the backward: the kernels' gradients
    are those of the plain backward, bit for bit."""
    info, call, leaves = _drawn(loss, data, device)
    assume(leaves and not _overwrites_its_logits(call))
    tensors = _tensors(call)

    def gradients(checkpointed):
        copies = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
        summed = _summed_loss(info, call)
        value = (torch.utils.checkpoint.checkpoint(summed, *copies, use_reentrant=reentrant)
                 if checkpointed else summed(*copies))
        if not value.requires_grad:
            return []
        value.backward()
        return [c.grad for c in copies if c.requires_grad]
    for grad, plain in zip(gradients(True), gradients(False)):
        assert (grad is None) == (plain is None)
        if grad is not None:
            torch.testing.assert_close(grad, plain, rtol=0, atol=0, equal_nan=True, msg=repr(call))


# --- batched grad_outputs --------------------------------------------------------------------

@_for_each_loss(examples=DERIVATIVE_EXAMPLES, names=DIFFERENTIATED)
def test_batched_grad_outputs_equal_one_backward_each(loss, data, device):
    """is_grads_batched=True (what jacobian(vectorize=True) runs: the backward under autograd's
    vmap) gives, per grad_output, the gradients of one plain backward through the kernels."""
    info, call, leaves = _drawn(loss, data, device)
    value = _first_output(info.function(*call.args, **call.kwargs))
    assume(leaves and value.requires_grad and not _overwrites_its_logits(call))
    grad_outputs = _seeded_like([value, value], seed=5)
    batched = torch.autograd.grad(value, leaves, torch.stack(grad_outputs), allow_unused=True,
                                  is_grads_batched=True)
    for b, grad_output in enumerate(grad_outputs):
        single = torch.autograd.grad(_first_output(info.function(*call.args, **call.kwargs)),
                                     leaves, grad_output, allow_unused=True)
        for many, one, leaf in zip(batched, single, leaves):
            one = torch.zeros_like(leaf) if one is None else one
            many = torch.zeros_like(leaf) if many is None else many[b]
            torch.testing.assert_close(many, one, rtol=1e-6, atol=1e-8, equal_nan=True,
                                       msg=repr(call))
