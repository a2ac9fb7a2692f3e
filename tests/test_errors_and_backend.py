"""Bad input raises the error type torch raises for the same call, before anything runs; the
backend switch follows docs/design.md (Backends)."""
import pytest
import torch
import torch.nn.functional as TF

import fusedloss
import fusedloss.functional as F
from fusedloss import _args

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
    # dtypes torch refuses
    ("cross_entropy", (x, torch.tensor([0, 1, 2])), {"weight": torch.ones(5, dtype=torch.float64)}),
    ("nll_loss", (x, torch.tensor([0, 1, 2])), {"weight": torch.ones(5, dtype=torch.float16)}),
    ("cross_entropy", (x.long(), torch.tensor([0, 1, 2])), {}),
    ("mse_loss", (torch.arange(3), torch.arange(3)), {}),
    ("huber_loss", (torch.arange(3), torch.randn(3)), {}),
    ("l1_loss", (torch.arange(3), torch.arange(3)), {}),
    ("binary_cross_entropy", (torch.rand(3), torch.rand(3, dtype=torch.float64)), {}),
    ("binary_cross_entropy_with_logits", (torch.randn(3), torch.tensor([0, 1, 1])), {}),
    ("margin_ranking_loss", (torch.randn(3) > 0, torch.randn(3), torch.ones(3)), {}),
    ("cross_entropy", (x, torch.tensor([0, 1, 2])), {"weight": torch.ones(5, requires_grad=True)}),
    ("nll_loss", (x, torch.tensor([0, 1, 2])), {"weight": torch.ones(5, requires_grad=True)}),
    # a second device ("meta" exists everywhere; torch refuses to mix it with CPU tensors)
    ("cross_entropy", (x, torch.tensor([0, 1, 2], device="meta")), {}),
    ("cross_entropy", (x, torch.tensor([0, 1, 2])), {"weight": torch.ones(5, device="meta")}),
    ("l1_loss", (torch.randn(3), torch.randn(3, device="meta")), {}),
]


@pytest.mark.parametrize("name,args,kwargs", BAD_CALLS)
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_bad_input_raises_torchs_error_type(name, args, kwargs, backend):
    with pytest.raises(Exception) as torch_error:
        getattr(TF, name)(*args, **kwargs)
    with fusedloss.use_backend(backend), pytest.raises(torch_error.type) as ours:
        getattr(F, name)(*args, **kwargs)
    assert str(ours.value)


def test_mixed_devices_name_the_devices():
    """Before any check reads a value (`.item()` on a meta tensor would say something else)."""
    target = torch.tensor([0, 1, 2], device="meta")
    for fn, args in ((F.cross_entropy, (x, target)), (F.nll_loss, (x, target)),
                     (F.softmax_focal_loss, (x, target)),
                     (F.linear_cross_entropy, (torch.randn(3, 4), torch.randn(5, 4), target))):
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device, "
                                               "but found at least two devices, cpu and meta"):
            fn(*args)


def test_probabilities_refuse_an_explicit_ignore_index():
    """torch 2.13's linear_cross_entropy: ignore_index only applies to class indices."""
    probabilities = torch.rand(3, 5).softmax(1)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified when target "
                                           "contains probabilities"):
        F.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4), probabilities, ignore_index=-100)


QUEUED_CASES = [  # (call, error on the host, the queued assert's message or None: accepted)
    (lambda: F.cross_entropy(x, torch.tensor([0, 4, 5])), IndexError, "out of bounds for 5 classes"),
    (lambda: F.cross_entropy(x, torch.tensor([0, -100, 4])), None, None),
    (lambda: F.cross_entropy(x, torch.tensor([0, 2, -1]), ignore_index=2), IndexError,
     "out of bounds for 5 classes"),
    (lambda: F.cross_entropy(x, torch.tensor([0, 7, 4]), ignore_index=7), None, None),
    (lambda: F.binary_cross_entropy(torch.tensor([0.0, 1.0, 1.5]), torch.ones(3)), RuntimeError,
     "between 0 and 1"),
    (lambda: F.binary_cross_entropy(torch.tensor([0.0, 1.0, 0.5]), torch.ones(3)), None, None),
]


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_queued_checks_refuse_what_the_host_refuses(backend):
    """The device path of the value checks (_args.checks_queued_as_on_cuda; torch._assert_async
    raises at once on the CPU) refuses and accepts what the host path does, on either backend."""
    with fusedloss.use_backend(backend):
        for call, host_error, queued_message in QUEUED_CASES:
            if host_error is None:
                call()
                with _args.checks_queued_as_on_cuda():
                    call()
                continue
            with pytest.raises(host_error):
                call()
            with _args.checks_queued_as_on_cuda(), pytest.raises(RuntimeError, match=queued_message):
                call()


@pytest.mark.parametrize("alpha", [1.5, -0.5, 2.0])
def test_sigmoid_focal_alpha_outside_unit_interval_is_torchvisions_value_error(alpha):
    with pytest.raises(ValueError, match=f"Invalid alpha value: {alpha}"):
        F.sigmoid_focal_loss(torch.randn(3), torch.rand(3), alpha=alpha)


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
