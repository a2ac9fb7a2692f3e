"""Differential tests of the CTC kernels (ctc_loss, ctc_loss_with_logits) through the Triton
interpreter: each call runs the public function on the kernels and is judged against the
float64 reference (and torch at the same dtype) by fusedloss.testing's tolerance rule, forward
and backward with a random grad_output.

One batch carries every hard case at once: a full-length target, a target with repeated labels
(adjacent repeats need a blank between them), an empty target, an infeasible target (more frames
needed than the input has) and a zero-length input; shapes stay tiny for the interpreter.
"""
import pytest
import torch

from fusedloss import _backend, _dispatch
from fusedloss import functional as F
from fusedloss.testing import assert_close_to_reference
from fusedloss.triton_kernels import ctc as ctc_kernels

# numpy's warnings from the interpreter evaluating log(0), -inf - -inf and the like in lanes the
# kernels then mask or select away
NAMES = ("ctc_loss", "ctc_loss_with_logits")
NUM_CLASSES = 6


def _input(name, shape, dtype=torch.float32, scale=2.0, seed=0):
    """Logits, or their log_softmax for ctc_loss, as a leaf that requires grad."""
    generator = torch.Generator().manual_seed(seed)
    values = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    if name == "ctc_loss":
        values = values.log_softmax(-1)
    return values.to(dtype).requires_grad_()


def _batch(blank=0, feasible_only=False):
    """Rows of labels (never the blank) and input lengths for T = 10 frames."""
    labels = [c for c in range(NUM_CLASSES) if c != blank]
    rows = [
        [labels[0], labels[1], labels[2], labels[3]],  # full length
        [labels[2], labels[2], labels[1], labels[2]],  # repeats: 2 2 needs a blank between
        [],  # empty target: the loss is -log P(all blanks)
        [labels[4], labels[4], labels[4]],  # needs 5 frames, gets 4: infeasible
        [labels[1]],  # zero-length input: infeasible
    ]
    input_lengths = [10, 7, 6, 4, 0]
    if feasible_only:
        rows, input_lengths = rows[:3], input_lengths[:3]
    return rows, input_lengths


def _targets(rows, layout, pad):
    if layout == "concatenated":
        return torch.tensor([c for row in rows for c in row], dtype=torch.int64)
    width = max(len(row) for row in rows) + 1  # wider than needed: S comes from the shape
    return torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.int64)


def _check(name, x, rows, input_lengths, layout="padded", blank=0, **kwargs):
    targets = _targets(rows, layout, pad=blank)
    target_lengths = torch.tensor([len(row) for row in rows])
    assert_close_to_reference(name, x, targets, torch.tensor(input_lengths), target_lengths,
                              blank=blank, **kwargs)


def test_interpreter_resolves_to_the_kernels():
    assert _backend.interpreting(), "tests/conftest.py must set TRITON_INTERPRET=1"
    for name in NAMES:
        assert _dispatch.has_kernel(name)
    x = _input("ctc_loss", (4, 1, NUM_CLASSES))
    loss = F.ctc_loss(x, torch.tensor([[1, 2]]), [4], [2], reduction="none")
    assert type(_dispatch.kernel_node(loss)).__name__ == "SweepCapture"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("layout", ["padded", "concatenated"])
def test_every_case_in_one_batch(name, reduction, zero_infinity, layout):
    rows, input_lengths = _batch()
    x = _input(name, (10, len(rows), NUM_CLASSES))
    _check(name, x, rows, input_lengths, layout, reduction=reduction, zero_infinity=zero_infinity)


@pytest.mark.parametrize("name", NAMES)
def test_states_in_tiles(name, monkeypatch):
    # 8-state tiles over 11 extended states, what any label length past MAX_STATE_TILE takes:
    # the recursions sweep 2 tiles a frame, the gradient kernel normalises over both and carries
    # a run of one class's states (the repeated label's 3) across the tile boundary
    monkeypatch.setattr(ctc_kernels, "MAX_STATE_TILE", 8)
    rows, input_lengths = _batch()
    x = _input(name, (10, len(rows), NUM_CLASSES), seed=10)
    _check(name, x, rows, input_lengths, reduction="mean", zero_infinity=True)


@pytest.mark.parametrize("name", NAMES)
def test_one_tile_over_several_warps(name, device):
    """129 pairs: one tile of 256 on 2 warps on a GPU, where the shift between frames moves
    values from one warp to the other (through shared memory; within a warp it is shuffles), up
    to the final blank (pair 128), which steps from label 127. The gradient is checked on
    CUDA; through the interpreter its kernel's associative scan (a Python call per element)
    would take 20 s here, and the interpreter has no warps to cross, so there the values alone
    are compared (the gradient kernel has its own tests above)."""
    labels = torch.arange(128) % (NUM_CLASSES - 1) + 1
    labels[[40, 127]] = labels[[39, 126]]  # two repeats, one before the final blank
    targets = torch.stack([labels, labels.roll(3)])
    x = _input(name, (136, 2, NUM_CLASSES), seed=11)
    if device == "cpu":
        x = x.detach()
    assert_close_to_reference(name, x, targets, torch.tensor([136, 120]), torch.tensor([128, 100]),
                              reduction="sum")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("blank", [NUM_CLASSES - 1, NUM_CLASSES // 2])
def test_blank_not_zero(name, blank):
    rows, input_lengths = _batch(blank)
    x = _input(name, (10, len(rows), NUM_CLASSES), seed=1)
    _check(name, x, rows, input_lengths, blank=blank, zero_infinity=True, reduction="none")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(name, dtype):
    rows, input_lengths = _batch(feasible_only=True)
    x = _input(name, (10, len(rows), NUM_CLASSES), dtype=dtype, seed=2)
    _check(name, x, rows, input_lengths, reduction="sum")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("lengths_as", ["tensor", "list"])
def test_unbatched(name, reduction, lengths_as):
    x = _input(name, (8, NUM_CLASSES), seed=3)
    targets = torch.tensor([1, 1, 3])
    il, tl_ = ([8], [3]) if lengths_as == "list" else (torch.tensor(8), torch.tensor(3))
    assert_close_to_reference(name, x, targets, il, tl_, reduction=reduction)


@pytest.mark.parametrize("name", NAMES)
def test_target_label_equal_to_blank(name):
    # torch accepts it; the kernels merge every state of that class into one gradient entry
    x = _input(name, (9, 2, NUM_CLASSES), seed=4)
    targets = torch.tensor([[0, 2, 0], [3, 0, 3]])
    assert_close_to_reference(name, x, targets, torch.tensor([9, 8]), torch.tensor([3, 3]),
                              reduction="sum")


@pytest.mark.parametrize("name", NAMES)
def test_strided_input(name):
    # (N, T, C) storage seen as (T, N, C): the kernels address through strides, no copy
    x = _input(name, (3, 7, NUM_CLASSES), seed=5).detach().transpose(0, 1).requires_grad_()
    assert not x.is_contiguous()
    assert_close_to_reference(name, x, torch.tensor([[1, 2], [3, 3], [4, 0]]),
                              torch.tensor([7, 5, 3]), torch.tensor([2, 2, 1]), reduction="none")


@pytest.mark.parametrize("zero_infinity", [False, True])
def test_logits_above_one_block(zero_infinity):
    # C = 1500 > the interpreter's row block (1024): the multi-block softmax, and the zeroing of
    # an infeasible sequence's rows in blocks
    x = _input("ctc_loss_with_logits", (4, 2, 1500), seed=6)
    assert_close_to_reference("ctc_loss_with_logits", x, torch.tensor([[7, 1400, 7], [1499, 0, 0]]),
                              torch.tensor([4, 3]), torch.tensor([3, 1]),
                              zero_infinity=zero_infinity, reduction="sum")


@pytest.mark.parametrize("name", NAMES)
def test_large_logits_magnitudes(name):
    x = _input(name, (8, 2, NUM_CLASSES), scale=30.0, seed=7)
    assert_close_to_reference(name, x, torch.tensor([[1, 2, 1], [4, 4, 0]]), torch.tensor([8, 6]),
                              torch.tensor([3, 2]), reduction="sum")


def test_softmax_of_logits_near_1e4_keeps_its_precision():
    # the gradient's softmax is exp((z - max) - log sum): exp(z - (max + log sum)) rounds
    # max + log sum at 1e4's fp32 ulp (~1e-3) and was 2e-4 off here (found by a random fuzz)
    x = torch.tensor([[[1e4, 1e4, -3e4]], [[1e4 + 1, 1e4 - 1, 2e4]]]).requires_grad_(True)
    assert_close_to_reference("ctc_loss_with_logits", x, torch.tensor([[1]]), torch.tensor([2]),
                              torch.tensor([1]), reduction="sum")
    assert_close_to_reference("ctc_loss_with_logits", x[:1].detach().requires_grad_(True),
                              torch.tensor([[1]])[:, :0], torch.tensor([1]), torch.tensor([0]))

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("state_tile", [None, 8])
def test_values_without_grad(name, state_tile, monkeypatch):
    # without a gradient one tile keeps its states in registers and stores nothing, tiles
    # alternate two rows: both give the loss of the sweep that keeps the history, bit for bit
    if state_tile is not None:
        monkeypatch.setattr(ctc_kernels, "MAX_STATE_TILE", state_tile)
    rows, input_lengths = _batch()
    x = _input(name, (10, len(rows), NUM_CLASSES), seed=8)
    targets = _targets(rows, "padded", pad=0)
    lengths = (torch.tensor(input_lengths), torch.tensor([len(r) for r in rows]))
    got = getattr(F, name)(x.detach(), targets, *lengths, reduction="none")
    with_grad = getattr(F, name)(x, targets, *lengths, reduction="none")
    assert torch.equal(got, with_grad.detach())
    with _backend.use_backend("reference"):
        want = getattr(F, name)(x.detach().double(), targets, *lengths, reduction="none")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_backward_twice_is_the_same(reduction):
    # the fused backward scales the saved gradient in place ('mean' by each sequence's length);
    # a second backward through the retained graph differentiates the reference instead
    x = _input("ctc_loss_with_logits", (6, 2, NUM_CLASSES), seed=9)
    loss = F.ctc_loss_with_logits(x, torch.tensor([[1, 2], [3, 0]]), [6, 5], [2, 1],
                                  reduction=reduction)
    first, = torch.autograd.grad(loss, x, retain_graph=True)
    second, = torch.autograd.grad(loss, x, torch.tensor(2.0), retain_graph=True)
    torch.testing.assert_close(second, 2 * first)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_states_kernel_records_the_label_check_on_cudas_path(reduction):
    """With the checks queued as on CUDA, the states kernel checks the labels as it reads them:
    only those inside a target's length. Padding outside [0, C) past the lengths gives the
    host path's values and gradient; one label out of range inside a length raises the queued
    assert's RuntimeError."""
    from fusedloss import _args
    rows, input_lengths = _batch(feasible_only=True)
    clean = _targets(rows, "padded", pad=0)
    garbage = clean.clone()
    for row, labels in zip(garbage, rows):
        row[len(labels):] = torch.tensor([NUM_CLASSES + 5, -3] * 4)[:row.numel() - len(labels)]
    lengths = torch.tensor(input_lengths), torch.tensor([len(row) for row in rows])
    x = _input("ctc_loss", (10, len(rows), NUM_CLASSES))
    expected = F.ctc_loss(x, clean, *lengths, reduction=reduction)
    expected_grad, = torch.autograd.grad(expected.sum(), x)
    with _args.checks_queued_as_on_cuda():
        actual = F.ctc_loss(x, garbage, *lengths, reduction=reduction)
        actual_grad, = torch.autograd.grad(actual.sum(), x)
        bad = clean.clone()
        bad[1, len(rows[1]) - 1] = NUM_CLASSES
        with pytest.raises(RuntimeError, match="label out of range"):
            F.ctc_loss(x, bad, *lengths, reduction=reduction)
    assert torch.equal(actual, expected) and torch.equal(actual_grad, expected_grad)
