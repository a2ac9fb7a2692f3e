"""Every loss through the differential fuzzer (fusedloss.testing.fuzz) at the CI budget.

The same strategies and the same comparison (fusedloss.testing.compare) as `python -m fusedloss
check`: one definition of "agrees with the reference" for the whole project. Run longer locally
with `pytest tests/test_fuzz_all_losses.py --fuzz-examples 200`.
"""
import pytest

from fusedloss import catalog
from fusedloss.testing import fuzz

SEED = 20240601  # CI runs are reproducible; a local long run may pass --fuzz-examples


@pytest.mark.parametrize("loss", catalog.NAMES)
def test_loss_agrees_with_reference(loss, fuzz_examples, device):
    report = fuzz(loss, examples=fuzz_examples, device=device, seed=SEED)
    assert report.ok, "\n" + str(report)
