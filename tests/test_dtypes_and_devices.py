"""Every dtype combination torch accepts, fusedloss accepts with torch's output dtype and values;
every one torch refuses, fusedloss refuses with torch's exception type, before any kernel runs.

The combinations: integer, bool, 16/32/64-bit floating and complex operands of each elementwise
torch twin, through the public function on the backend in force (the kernels, or the reference
where `_args.kernels_take` routes a call there), against torch.nn.functional itself.
"""
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as TF

import fusedloss.functional as F

# CPU tensors on every test device: the combinations torch refuses raise before anything runs
pytestmark = pytest.mark.cpu_tensors

DTYPES = (torch.int64, torch.bool, torch.float16, torch.float32, torch.float64, torch.complex64)
PAIR_LOSSES = ("l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss",
               "binary_cross_entropy_with_logits", "binary_cross_entropy")


def _operand(dtype, seed):
    """Four values in [0, 1) (BCE's probabilities) as `dtype`: integers 0..2, bools, complex."""
    x = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if dtype == torch.bool:
        return x > 0.5
    if dtype.is_complex:
        return torch.complex(x, 1 - x).to(dtype)
    return (x * 3).long() if not dtype.is_floating_point else x.to(dtype)


def _outcome(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the type is what is compared
            return error


def _tolerance(result, operands):
    """Exact for integer results; else torch.testing's tolerance for the least precise floating
    operand (torch may compute part of a loss in an operand's 16 bits where fusedloss keeps 32)."""
    if not (result.is_floating_point() or result.is_complex()):
        return dict(rtol=0, atol=0)
    floats = [t.dtype for t in operands if t.is_floating_point()] or [torch.float32]
    coarsest = max(floats, key=lambda dtype: torch.finfo(dtype).eps)
    rtol = {torch.float16: 1e-3, torch.bfloat16: 1.6e-2}.get(coarsest, 1.3e-6)
    return dict(rtol=rtol, atol=1e-5)


def _assert_same_outcome(ours, theirs, what, *operands):
    if isinstance(theirs, Exception):
        assert isinstance(ours, type(theirs)), (
            f"{what}: torch raised {type(theirs).__name__}: {theirs}; fusedloss gave {ours!r}")
        return
    assert not isinstance(ours, Exception), f"{what}: torch accepts; fusedloss raised {ours!r}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype}, torch {theirs.dtype}"
    torch.testing.assert_close(ours, theirs, equal_nan=True, msg=what,
                               **_tolerance(theirs, operands))


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_follow_torchs_dtype_rules(name):
    # 'none' shows the per-element dtype, 'mean' the reduction's ('sum' behaves as 'none' does)
    for (a, b), reduction in itertools.product(itertools.product(DTYPES, DTYPES), ("none", "mean")):
        x, y = _operand(a, 0), _operand(b, 1)
        _assert_same_outcome(_outcome(getattr(F, name), x, y, reduction=reduction),
                             _outcome(getattr(TF, name), x, y, reduction=reduction),
                             f"{name}({a}, {b}, reduction={reduction!r})", x, y)


def test_margin_ranking_loss_follows_torchs_dtype_rules():
    """Integer operands promote to float32 (the float margin), never truncated."""
    for a, b, c in itertools.product(DTYPES, DTYPES, DTYPES):
        x1, x2, y = _operand(a, 0), _operand(b, 1), _operand(c, 2)
        _assert_same_outcome(_outcome(F.margin_ranking_loss, x1, x2, y, margin=0.5),
                             _outcome(TF.margin_ranking_loss, x1, x2, y, margin=0.5),
                             f"margin_ranking_loss({a}, {b}, {c})", x1, x2, y)


def test_integer_margin_ranking_is_not_truncated():
    """The issue's case: a mean of 0.75 over integer inputs is 0.75 in float32, not 0."""
    x1, x2, y = torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 3]), torch.tensor([1, 1, 1, 1])
    loss = F.margin_ranking_loss(x1, x2, y)
    assert loss.dtype == torch.float32 and float(loss) == 0.75


def test_weights_promote_as_torch():
    """Elementwise and class weights of another floating dtype: torch's output dtype."""
    x, y, w = _operand(torch.float32, 0), _operand(torch.float32, 1), _operand(torch.float64, 2)
    for name in ("l1_loss", "mse_loss", "huber_loss", "binary_cross_entropy"):
        _assert_same_outcome(_outcome(getattr(F, name), x, y, weight=w),
                             _outcome(getattr(TF, name), x, y, weight=w), f"{name}(weight=fp64)", x)
    for key in ("weight", "pos_weight"):
        _assert_same_outcome(_outcome(F.binary_cross_entropy_with_logits, x, y, **{key: w}),
                             _outcome(TF.binary_cross_entropy_with_logits, x, y, **{key: w}),
                             f"binary_cross_entropy_with_logits({key}=fp64)", x)
    logits, probabilities = torch.randn(2, 3), torch.rand(2, 3, dtype=torch.float64)
    for weight in (None, torch.rand(3, dtype=torch.float16)):
        _assert_same_outcome(_outcome(F.cross_entropy, logits, probabilities, weight),
                             _outcome(TF.cross_entropy, logits, probabilities, weight),
                             "cross_entropy(fp32 logits, fp64 probabilities)", logits)

