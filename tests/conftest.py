"""Test set-up shared by every test module.

Where the kernels run: `--device cpu` (the default without CUDA) sets TRITON_INTERPRET=1 here,
before anything imports triton, so the differential tests check the Triton kernels through the
interpreter rather than the reference against itself. `--device cuda` (the default with CUDA;
also FUSEDLOSS_TEST_DEVICE=cuda) leaves the interpreter off and runs every test on CUDA tensors
through the compiled kernels: inside each test torch's default device is CUDA, and a random
tensor drawn from a CPU torch.Generator is drawn on the CPU and moved, so a test sees the same
numbers on either device. Tests marked `cpu_tensors` (bad-input checks, whose CUDA twins end in
a device-side assert that poisons the process; gloo) and the modules in _CPU_TENSOR_MODULES (the
reference's own proofs, the wrapper layers' checks) keep CPU tensors on every device.

Hypothesis profiles: 'ci' (derandomized, a small example budget, no deadline, failure blobs
printed) is the default and what CI uses; 'dev' runs many more examples. Pick one with
HYPOTHESIS_PROFILE=dev or `--hypothesis-profile dev`, or size the fuzz tests directly with
`--fuzz-examples N` (which the `fuzz_examples` fixture hands to tests/test_fuzz_all_losses.py).
"""
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

CI_EXAMPLES = 12
FUZZ_CI_EXAMPLES = 100  # per loss in tests/test_fuzz_all_losses.py (about 80 s in all on 2 CPU cores)
DEV_EXAMPLES = 200

settings.register_profile("ci", derandomize=True, max_examples=CI_EXAMPLES, deadline=None,
                          print_blob=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=DEV_EXAMPLES, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_RANDOM_FACTORIES = ("randn", "rand", "randint", "randperm", "normal")


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=None, metavar="N",
                     help="examples per loss for the differential fuzz tests (default "
                          f"{FUZZ_CI_EXAMPLES}; with the 'dev' profile {DEV_EXAMPLES})")
    parser.addoption("--device", choices=("cpu", "cuda"), default=None,
                     help="where the kernels run: cpu (the Triton interpreter) or cuda (compiled); "
                          "default FUSEDLOSS_TEST_DEVICE, else cuda when available")


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_tensors: the test builds CPU tensors on every device")
    device = (config.getoption("--device") or os.environ.get("FUSEDLOSS_TEST_DEVICE")
              or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: this torch sees no CUDA device")
    # the kernels take interpreted or compiled form when their module is imported
    if "fusedloss.triton_kernels" in sys.modules and \
            (device == "cpu") != (os.environ.get("TRITON_INTERPRET") == "1"):
        raise pytest.UsageError("fusedloss's kernels were imported before tests/conftest.py chose "
                                "the device")
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    config.test_device = device
    examples = config.getoption("--fuzz-examples")
    if examples is not None and examples > CI_EXAMPLES:
        # a long local run: every hypothesis test gets the larger budget, randomised
        settings.register_profile("fuzz-examples", parent=settings.get_profile("dev"),
                                  max_examples=examples)
        settings.load_profile("fuzz-examples")


def pytest_report_header(config):
    kernels = "compiled kernels" if config.test_device == "cuda" else "the Triton interpreter"
    return f"fusedloss tests on {config.test_device} ({kernels})"


def _drawn_on_cpu(factory):
    """`factory` for which a CPU generator draws on the CPU, then moves the result to the
    default device (torch refuses a CPU generator for a CUDA tensor)."""
    def draw(*args, **kwargs):
        generator = kwargs.get("generator")
        if generator is None or generator.device.type != "cpu" or "device" in kwargs:
            return factory(*args, **kwargs)
        requires_grad = kwargs.pop("requires_grad", False)
        drawn = factory(*args, **kwargs, device="cpu").to(torch.get_default_device())
        return drawn.requires_grad_(requires_grad)
    return draw


# Modules whose tests keep CPU tensors on every device, besides those marked `cpu_tensors`: the
# reference's own proofs and the wrapper layers' argument checks (bad indices among them).
_CPU_TENSOR_MODULES = ("test_reference_", "test_paddle", "test_nn")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__.startswith(_CPU_TENSOR_MODULES):
            item.add_marker(pytest.mark.cpu_tensors)


@pytest.fixture(scope="session")
def device(request):
    """'cpu' or 'cuda': where this session's tests run the kernels."""
    return request.config.test_device


@pytest.fixture(autouse=True)
def _tensors_on_test_device(request, device):
    if device == "cpu" or request.node.get_closest_marker("cpu_tensors"):
        yield
        return
    monkeypatch = pytest.MonkeyPatch()
    for name in _RANDOM_FACTORIES:
        monkeypatch.setattr(torch, name, _drawn_on_cpu(getattr(torch, name)))
    previous = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(previous)
        monkeypatch.undo()


@pytest.fixture(scope="session")
def fuzz_examples(request):
    """Calls drawn per loss by tests/test_fuzz_all_losses.py."""
    examples = request.config.getoption("--fuzz-examples")
    if examples is not None:
        return examples
    if settings.default.max_examples > CI_EXAMPLES:  # the 'dev' profile or a bigger one
        return settings.default.max_examples
    return FUZZ_CI_EXAMPLES


@pytest.fixture
def kernel_launches(monkeypatch):
    """spy(module, name): from then on in the test, every launch of the kernel `name` of the
    kernel module runs as usual and its keyword arguments (constexprs, num_warps) are appended
    to the list spy returns."""
    def spy(module, name):
        kernel, seen = getattr(module, name), []

        class Spy:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    seen.append(kwargs)
                    return kernel[grid](*args, **kwargs)
                return launch

        monkeypatch.setattr(module, name, Spy())
        return seen
    return spy


@pytest.fixture
def reference_backend():
    """Runs the test with the reference backend (tests of the oracle itself)."""
    import fusedloss
    with fusedloss.use_backend("reference"):
        yield


@pytest.fixture(scope="session")
def torchcrf():
    """pytorch-crf (a test extra); the comparison skips, saying so, where it is not installed."""
    return pytest.importorskip("torchcrf", reason="pytorch-crf is not installed (pip install pytorch-crf)")
