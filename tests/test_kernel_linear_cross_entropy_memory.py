"""linear_cross_entropy's peak memory, forward + backward, beyond its inputs and the gradients it
returns: at most 256 MiB at N = 8192, H = 2304, V = 256000 in bf16 with the GPU's blocks, counted
by benchmarks/lce_memory.py's model (the host code on meta tensors, the device primitives as
shape-only stand-ins), and the model checked against a real interpreter run at a small size."""
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import lce_memory  # noqa: E402

MIB = 2**20


@pytest.mark.parametrize("reduction,bias", [("mean", False), ("mean", True), ("none", False)])
def test_peak_at_the_issue_size(reduction, bias):
    """Within the budget, and what the kernel's header says it holds: grad_X in fp32, one
    vocabulary chunk's grad_W rows in fp32 and a 4096 x 4096 logits block (fp32 logits and their
    bf16 gradient), plus O(N) per-token values and, with a bias, its fp32 gradient."""
    size = lce_memory.ISSUE_SIZE
    x, w, target, b = lce_memory.meta_problem(**size, bias=bias)
    peak = lce_memory.peak_bytes(x, w, target, b, reduction=reduction)
    tokens, features = size["num_rows"], size["features"]
    held = 4 * tokens * features + 4 * 4096 * features + (4 + 2) * 4096 * 4096
    if bias:
        held += 4 * size["num_classes"]
    assert held <= peak <= held + MIB
    assert peak <= lce_memory.BUDGET


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_model_predicts_a_real_run(dtype, reduction):
    """The interpreter's run allocates exactly what the meta model predicts, at a size where
    the blocks split tokens (4 + 4 + 2) and classes (1100 + 400)."""
    generator = torch.Generator().manual_seed(0)
    num_rows, features, num_classes, chunk = 10, 12, 1500, (4, 1100)
    real = (torch.randn(num_rows, features, generator=generator).to(dtype).requires_grad_(),
            (0.3 * torch.randn(num_classes, features, generator=generator)).to(dtype).requires_grad_(),
            torch.randint(0, num_classes, (num_rows,), generator=generator),
            torch.randn(num_classes, generator=generator).to(dtype).requires_grad_())
    real[2][1::3] = -100
    meta = lce_memory.meta_problem(num_rows, features, num_classes, dtype, bias=True)
    options = dict(chunk=chunk, reduction=reduction, label_smoothing=0.1)
    predicted = lce_memory.peak_bytes(*meta, **options)
    assert lce_memory.peak_bytes(*real, **options) == predicted
    # the grad_W rows of one vocabulary chunk (16-bit inputs: fp32) at least
    assert predicted >= (4 if dtype == torch.bfloat16 else 0) * chunk[1] * features  # noqa: E501
