"""Calls that must raise: each raises the exception type torch raises for the same call.

For losses with a torch.nn.functional twin, torch is asked on the very same call and the type of
its exception is the truth; for the others the strategy states the type (ValueError for bad
options and shapes, IndexError for out-of-range indices, as pytorch-crf and Paddle do).
"""
import warnings

import pytest
from hypothesis import given

import fusedloss
from fusedloss import _args, catalog
from fusedloss.testing.strategies import invalid_calls
from fusedloss.testing.twins import torch_function

# CPU tensors on every test device: bad input on CUDA ends in a device-side assert that poisons the process
pytestmark = pytest.mark.cpu_tensors


def _raised(fn, call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn(*call.args, **call.kwargs)
        except Exception as error:  # noqa: BLE001 - the type is what is checked
            return error
    return None


@pytest.mark.parametrize("loss", catalog.NAMES)
def test_invalid_call_raises_torchs_error(loss):
    @given(invalid_calls(loss))
    def check(call):
        info = catalog.get(loss)
        ours = _raised(info.function, call)
        assert ours is not None, f"{call!r} ({call.note}) did not raise"
        if call.expected is None:  # a torch twin's call: torch's exception type is the truth
            theirs = _raised(torch_function(info.twin), call)
            assert theirs is not None, f"torch accepts {call!r} ({call.note}); fusedloss raised {ours!r}"
            expected = type(theirs)
        else:  # no twin, or an option only fusedloss has (torch would raise TypeError)
            expected = call.expected
        assert isinstance(ours, expected), (
            f"{call!r} ({call.note}): fusedloss raised {type(ours).__name__}: {ours}; "
            f"expected {expected.__name__}")
        with fusedloss.use_backend("reference"):
            reference = _raised(info.function, call)
        assert type(reference) is type(ours), "the error must not depend on the backend"

    check()


@pytest.mark.parametrize("loss", catalog.NAMES)
def test_invalid_call_raises_with_checks_queued_as_on_cuda(loss):
    """CUDA's path (_args.checks_queued_as_on_cuda: value checks queued as device asserts, some
    recorded by the kernels themselves) refuses every invalid call too, with the same exception
    on either backend: the type the host path raises, or the queued assert's RuntimeError."""
    @given(invalid_calls(loss))
    def check(call):
        info = catalog.get(loss)
        with _args.checks_queued_as_on_cuda():
            ours = _raised(info.function, call)
            with fusedloss.use_backend("reference"):
                reference = _raised(info.function, call)
        host = _raised(info.function, call)
        assert ours is not None, f"{call!r} ({call.note}) did not raise on CUDA's path"
        assert isinstance(ours, (type(host), RuntimeError)), (
            f"{call!r} ({call.note}): {type(ours).__name__}: {ours}; the host raised {host!r}")
        assert type(reference) is type(ours), "the error must not depend on the backend"

    check()
