"""Test set-up shared by every test module.

TRITON_INTERPRET=1 is set here, first, before anything imports triton, so on a CPU-only machine
the differential tests check the Triton kernels through the interpreter rather than the
reference against itself. (With CUDA the kernels run natively and this is left alone.)

Hypothesis profiles: 'ci' (derandomized, a small example budget, no deadline, failure blobs
printed) is the default and what CI uses; 'dev' runs many more examples. Pick one with
HYPOTHESIS_PROFILE=dev or `--hypothesis-profile dev`, or size the fuzz tests directly with
`--fuzz-examples N` (which the `fuzz_examples` fixture hands to tests/test_fuzz_all_losses.py).
"""
import os

try:
    import torch
    _cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

CI_EXAMPLES = 12
FUZZ_CI_EXAMPLES = 100  # per loss in tests/test_fuzz_all_losses.py (about 80 s in all on 2 CPU cores)
DEV_EXAMPLES = 200

settings.register_profile("ci", derandomize=True, max_examples=CI_EXAMPLES, deadline=None,
                          print_blob=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=DEV_EXAMPLES, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--fuzz-examples", type=int, default=None, metavar="N",
                     help="examples per loss for the differential fuzz tests (default "
                          f"{FUZZ_CI_EXAMPLES}; with the 'dev' profile {DEV_EXAMPLES})")


def pytest_configure(config):
    examples = config.getoption("--fuzz-examples")
    if examples is not None and examples > CI_EXAMPLES:
        # a long local run: every hypothesis test gets the larger budget, randomised
        settings.register_profile("fuzz-examples", parent=settings.get_profile("dev"),
                                  max_examples=examples)
        settings.load_profile("fuzz-examples")


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
def reference_backend():
    """Runs the test with the reference backend (tests of the oracle itself)."""
    import fusedloss
    with fusedloss.use_backend("reference"):
        yield
