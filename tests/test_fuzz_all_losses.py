"""Every loss through the differential fuzzer (fusedloss.testing.fuzz) at the CI budget.

The same strategies and the same comparison (fusedloss.testing.compare) as `python -m fusedloss
check`: one definition of "agrees with the reference" for the whole project. Run longer locally
with `pytest tests/test_fuzz_all_losses.py --fuzz-examples 200`.
"""
import pytest

from fusedloss import catalog
from fusedloss.testing import fuzz

SEED = 20240601  # CI runs are reproducible; a local long run may pass --fuzz-examples

# Each loss's budget is drawn in SHARDS independent runs (seeds SEED + shard), so the
# interpreter-heavy losses (CTC's serial frame chain takes minutes) spread over the xdist
# workers instead of leaving one worker to finish them alone.
SHARDS = 4


@pytest.mark.parametrize("shard", range(SHARDS))
@pytest.mark.parametrize("loss", catalog.NAMES)
def test_loss_agrees_with_reference(loss, shard, fuzz_examples, device):
    examples = -(-fuzz_examples // SHARDS)
    report = fuzz(loss, examples=examples, device=device, seed=SEED + shard)
    assert report.ok, "\n" + str(report)
