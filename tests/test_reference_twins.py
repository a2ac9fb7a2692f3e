"""The oracle itself, checked against torch.nn.functional in float64: values and input gradients
for every torch twin of the catalog on every call the fuzzer's strategies draw (every reduction,
weights, ignore_index, soft targets, smoothing, N-d inputs, empty batches). The families' worked
numbers and formula checks are in tests/test_reference_<family>.py."""
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

from fusedloss import catalog
from fusedloss.testing.strategies import calls
from fusedloss.testing.twins import torch_function

pytestmark = pytest.mark.usefixtures("reference_backend")


def leaf(tensor):
    return tensor.detach().clone().requires_grad_()


def assert_same_as_torch(ours_fn, torch_fn, *inputs):
    """Values and gradients of every grad-requiring input agree in float64."""
    ours_inputs = [leaf(x) if torch.is_tensor(x) and x.requires_grad else x for x in inputs]
    torch_inputs = [leaf(x) if torch.is_tensor(x) and x.requires_grad else x for x in inputs]
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


@pytest.mark.parametrize("name", [info.name for info in catalog.LOSSES if info.twin])
@settings(max_examples=60)
@given(data=st.data())
def test_reference_equals_torch_on_the_fuzzers_calls(name, data):
    """Every call the fuzzer can draw for a torch twin, in float64: the reference (through the
    public function, so argument handling included) equals torch.nn.functional."""
    info = catalog.get(name)
    call = data.draw(calls(name, dtypes=(torch.float64,)))
    if any(call.kwargs.get(k, default) != default for k, default in info.extras.items()):
        return  # fusedloss-only options: checked by formula below, torch has nothing to say
    kwargs = {k: v for k, v in call.kwargs.items() if k not in info.extras}
    positions = [i for i, a in enumerate(call.args) if torch.is_tensor(a) and a.requires_grad]

    def rebuild(*leaves):
        args = list(call.args)
        for i, leaf in zip(positions, leaves):
            args[i] = leaf
        return args

    leaves = [call.args[i] for i in positions]
    if info.twin_gradient_differs:  # a different quantity (see the catalog)
        leaves, positions = [], []
    assert_same_as_torch(lambda *xs: info.function(*rebuild(*xs), **kwargs),
                         lambda *xs: torch_function(info.twin)(*rebuild(*xs), **kwargs), *leaves)
