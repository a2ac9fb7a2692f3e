"""Bad input raises the error type torch raises for the same call, before anything runs; the
backend switch follows docs/design.md (Backends)."""
import pytest
import torch
import torch.nn.functional as TF

import fusedloss
import fusedloss.functional as F

# CPU tensors on every test device: bad input on CUDA ends in a device-side assert that poisons the process
pytestmark = pytest.mark.cpu_tensors

x = torch.randn(3, 5)
BAD_CALLS = [
    ("cross_entropy", (x, torch.tensor([0, 1, 7])), {}),
    ("cross_entropy", (x, torch.tensor([0, 1, -3])), {}),
    ("cross_entropy", (x, torch.tensor([0, 1])), {}),
    ("cross_entropy", (x, torch.tensor([0.0, 1.0, 2.0])), {}),
    ("cross_entropy", (x, torch.tensor([0, 1, 2])), {"weight": torch.ones(4)}),
    ("cross_entropy", (x, torch.tensor([0, 1, 2])), {"reduction": "avg"}),
    ("cross_entropy", (x, torch.tensor([0, 1, 2]).int()), {}),
    ("cross_entropy", (x, torch.tensor([0, 1, 2])), {"label_smoothing": 1.5}),
    ("cross_entropy", (torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)), {}),
    ("nll_loss", (x, torch.tensor([[0, 1, 2]])), {}),
    ("binary_cross_entropy", (torch.tensor([1.5]), torch.tensor([1.0])), {}),
    ("binary_cross_entropy", (torch.tensor([0.5, 0.5]), torch.tensor([1.0])), {}),
    ("binary_cross_entropy_with_logits", (torch.tensor([0.5, 0.5]), torch.tensor([1.0])), {}),
    ("margin_ranking_loss", (torch.randn(3), torch.randn(3, 1), torch.randn(3)), {}),
    ("l1_loss", (torch.randn(3), torch.randn(3)), {"reduction": "x"}),
    ("mse_loss", (torch.randn(3), torch.randn(3)), {"weight": torch.ones(2)}),
    ("smooth_l1_loss", (torch.randn(3), torch.randn(3)), {"beta": -1.0}),
    ("huber_loss", (torch.randn(3), torch.randn(3)), {"delta": 0.0}),
]


@pytest.mark.parametrize("name,args,kwargs", BAD_CALLS)
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_bad_input_raises_torchs_error_type(name, args, kwargs, backend):
    with pytest.raises(Exception) as torch_error:
        getattr(TF, name)(*args, **kwargs)
    with fusedloss.use_backend(backend), pytest.raises(torch_error.type) as ours:
        getattr(F, name)(*args, **kwargs)
    assert str(ours.value)


def test_backend_switch():
    assert fusedloss.get_backend() == "auto"
    with fusedloss.use_backend("reference"):
        assert fusedloss.get_backend() == "reference"
    assert fusedloss.get_backend() == "auto"
    with pytest.raises(ValueError, match="auto, triton, reference"):
        fusedloss.set_backend("cuda")


def test_resolution_rules(monkeypatch):
    from fusedloss import _backend
    with fusedloss.use_backend("reference"):
        assert _backend.resolve("cpu") == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fusedloss.use_backend("auto"):
        assert _backend.resolve("cpu") == "reference"
        assert _backend.resolve("cuda") == "triton"
    with fusedloss.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _backend.resolve("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with fusedloss.use_backend("auto"):
        assert _backend.resolve("cpu") == "triton"


def test_backend_from_environment(monkeypatch):
    from fusedloss import _backend
    monkeypatch.setattr(_backend, "_current", None)
    monkeypatch.setenv("FUSEDLOSS_BACKEND", "reference")
    assert fusedloss.get_backend() == "reference"
    monkeypatch.setattr(_backend, "_current", None)
    monkeypatch.setenv("FUSEDLOSS_BACKEND", "nope")
    with pytest.raises(ValueError):
        fusedloss.get_backend()
    monkeypatch.setattr(_backend, "_current", "auto")
