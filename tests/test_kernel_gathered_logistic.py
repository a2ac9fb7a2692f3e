"""Differential tests of the gathered-row logistic kernels (hsigmoid and NCE) against the float64
oracle.

Every case goes through the public fusedloss.functional function on the backend in force (the
kernels: CUDA, or the Triton interpreter on CPU, where the feature chunk is 32 columns, 16 in
fp64, and the entry tile 4, so D = 37 and k = 5 run both loops) and through
`assert_close_to_reference`, which checks the loss and the gradients of every floating input
that requires grad after a random, never-all-ones grad_output. Batches of 8 over a handful of
tree nodes / classes repeat rows across samples, which is what the weight/bias scatter sums.
"""
import math

import pytest
import torch

import fusedloss.functional as F
from fusedloss import _args, _backend, _dispatch
from fusedloss.testing import assert_close_to_reference
from fusedloss.triton_kernels import _gathered_logistic

DEVICE = "cuda" if torch.cuda.is_available() and not _backend.interpreting() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
REDUCTIONS = ["none", "mean", "sum"]
N, D, C, K = 8, 37, 12, 5


def _normal(generator, shape, dtype, scale=1.0, grad=True):
    t = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    return t.to(DEVICE, dtype).requires_grad_(grad)


def _classes(generator, shape, high):
    return torch.randint(0, high, shape, generator=generator).to(DEVICE)


def hsigmoid_args(dtype, seed=0, batch=N, features=D, num_classes=C, bias=True, custom=False,
                  scale=1.0):
    """(args, kwargs) of one hsigmoid_loss call; `bias` True, False or 'column' ((R, 1))."""
    g = torch.Generator().manual_seed(seed)
    x = _normal(g, (batch, features), dtype, scale)
    label = _classes(g, (batch,) if seed % 2 else (batch, 1), num_classes)
    nodes = 5 if custom else num_classes - 1
    weight = _normal(g, (nodes, features), dtype, 0.3)
    kwargs = {}
    if bias:
        kwargs["bias"] = _normal(g, (nodes, 1) if bias == "column" else (nodes,), dtype)
    if custom:  # each row a prefix of up to 4 nodes (repeats allowed), padded with -1
        table, code = _classes(g, (batch, 4), nodes), _classes(g, (batch, 4), 2)
        for row in range(batch):
            table[row, 1 + row % 4:] = -1
            code[row, 1 + row % 4:] = -1
        kwargs.update(path_table=table, path_code=code)
    return (x, label, num_classes, weight), kwargs


def nce_args(dtype, seed=0, batch=N, features=D, num_classes=C, num_noise=K, bias=True,
             scale=1.0, peaked=False):
    g = torch.Generator().manual_seed(seed)
    x = _normal(g, (batch, features), dtype, scale)
    weight = _normal(g, (num_classes, features), dtype, 0.3)
    b = _normal(g, (num_classes,), dtype) if bias else None
    target = _classes(g, (batch,) if seed % 2 else (batch, 1), num_classes)
    noise = _classes(g, (batch, num_noise), num_classes)
    log_q = torch.randn(num_classes, generator=g, dtype=torch.float64) * (8.0 if peaked else 1.0)
    log_q = log_q.log_softmax(0).to(DEVICE, dtype)
    return (x, target, weight, b, noise, log_q), {}


MAKERS = {"hsigmoid_loss": hsigmoid_args, "nce_loss": nce_args}
WEIGHT_POSITION = {"hsigmoid_loss": 3, "nce_loss": 2}


def test_kernels_are_registered():
    assert _dispatch.has_kernel("hsigmoid_loss") and _dispatch.has_kernel("nce_loss")


@pytest.mark.parametrize("loss", ["hsigmoid_loss", "nce_loss"])
def test_reduced_losses_take_the_shared_backward(loss):
    # 'mean' and 'sum' finish every gradient in the forward; 'none' scales in its own backward
    args, kwargs = MAKERS[loss](torch.float32, seed=1, features=5)
    for reduction, backward in (("mean", "SweepCapture"),
                                ("none", "_PerSampleGatheredLogisticBackward")):
        node = _dispatch.kernel_node(getattr(F, loss)(*args, reduction=reduction, **kwargs))
        assert type(node).__name__ == backward


@pytest.mark.parametrize("entries", [1, 7, 100, 4096, 10 ** 6])
def test_pieces_bound_every_program(entries):
    # a piece's steps and the reduction of a row holding every entry both stay within s
    per_piece = _gathered_logistic.piece_entries(entries)
    steps = per_piece // _gathered_logistic.SCATTER_BLOCK_E
    assert per_piece % _gathered_logistic.SCATTER_BLOCK_E == 0
    assert math.ceil(entries / per_piece / _gathered_logistic.REDUCE_ROWS) <= steps
    assert steps <= 1 + math.sqrt(entries / (_gathered_logistic.SCATTER_BLOCK_E
                                             * _gathered_logistic.REDUCE_ROWS))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_rows_of_many_pieces(reduction):
    # 2 classes over 16 x 4 entries: each row ~32 entries, 3 pieces of 12 in the interpreter,
    # their partials reduced 2 a step; 'mean' scatters in the forward, 'none' in the backward
    # with each sample's grad_output
    args, _ = nce_args(torch.float32, seed=8, batch=16, features=5, num_classes=2, num_noise=3)
    args[-1].requires_grad_()
    assert_close_to_reference("nce_loss", *args, reduction=reduction)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_padding_and_rows_across_chunks(reduction):
    # a custom tree of 5 nodes over 32 x 4 entries, 0 to 3 of each sample's 4 of them -1
    # padding: the sorted entries (16 to a chunk in the interpreter) open with a run of padding
    # across chunks, which no program scatters, and each node's run crosses chunk boundaries
    args, kwargs = hsigmoid_args(torch.float64, seed=5, batch=32, features=3, custom=True)
    assert_close_to_reference("hsigmoid_loss", *args, reduction=reduction, **kwargs)


@pytest.mark.parametrize("loss", ["hsigmoid_loss", "nce_loss"])
@pytest.mark.parametrize("layout", ["summed", "strided"])
def test_per_sample_backward_reads_grad_output_by_stride(loss, layout):
    # loss.sum().backward() hands 'none' an expanded grad_output (stride 0), which the scatter
    # once indexed as contiguous (past its one element); the truth: 'sum' has those gradients
    args, kwargs = MAKERS[loss](torch.float64, seed=3, features=5)
    leaves = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.requires_grad]
    per_sample = getattr(F, loss)(*args, reduction="none", **kwargs)
    if layout == "summed":
        grads = torch.autograd.grad(per_sample.sum(), leaves)
        expected = torch.autograd.grad(getattr(F, loss)(*args, reduction="sum", **kwargs), leaves)
    else:
        scale = torch.rand(per_sample.shape[0], 2, dtype=torch.float64).to(DEVICE)
        grads = torch.autograd.grad(per_sample, leaves, scale[:, 0])
        expected = torch.autograd.grad((getattr(F, loss)(*args, reduction="none", **kwargs)
                                        * scale[:, 0].contiguous()).sum(), leaves)
    for grad, truth in zip(grads, expected):
        torch.testing.assert_close(grad, truth, rtol=1e-12, atol=1e-12)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hsigmoid_default_tree(dtype, reduction):
    seed = DTYPES.index(dtype) * 3 + REDUCTIONS.index(reduction)
    args, kwargs = hsigmoid_args(dtype, seed, bias=(True, False, "column")[seed % 3])
    assert_close_to_reference("hsigmoid_loss", *args, reduction=reduction, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_hsigmoid_custom_tree(dtype, bias):
    args, kwargs = hsigmoid_args(dtype, seed=int(bias), bias=bias, custom=True)
    assert_close_to_reference("hsigmoid_loss", *args, reduction="sum", **kwargs)


def test_hsigmoid_large_tree_and_long_segments():
    # 100 classes: paths of 6-7 nodes (two entry tiles); every sample passes the root
    args, kwargs = hsigmoid_args(torch.float32, seed=3, features=9, num_classes=100)
    assert_close_to_reference("hsigmoid_loss", *args, reduction="mean", **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nce(dtype, reduction):
    seed = DTYPES.index(dtype) * 3 + REDUCTIONS.index(reduction)
    args, kwargs = nce_args(dtype, seed, bias=seed % 2 == 0, peaked=seed % 3 == 0)
    assert_close_to_reference("nce_loss", *args, reduction=reduction, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nce_noise_log_probs_gradient(dtype):
    args, _ = nce_args(dtype, seed=5, num_classes=4)  # 4 classes over 8 x 6 entries: many repeats
    args[-1].requires_grad_()
    assert_close_to_reference("nce_loss", *args, reduction="none")


@pytest.mark.parametrize("loss", ["hsigmoid_loss", "nce_loss"])
@pytest.mark.parametrize("leaf", ["input", "weight"])
def test_one_input_requires_grad(loss, leaf):
    args, kwargs = MAKERS[loss](torch.float32, seed=7, features=20)
    for t in list(args) + list(kwargs.values()):
        if torch.is_tensor(t) and t.is_floating_point():
            t.requires_grad_(False)
    args[0 if leaf == "input" else WEIGHT_POSITION[loss]].requires_grad_()
    assert_close_to_reference(loss, *args, reduction="mean", **kwargs)


@pytest.mark.parametrize("loss", ["hsigmoid_loss", "nce_loss"])
def test_extreme_scores(loss):
    # |z| up to ~1e4: softplus / log-sigmoid must stay finite and exact, gradients saturate cleanly
    args, kwargs = MAKERS[loss](torch.float32, seed=2, features=20, scale=7e3)
    assert_close_to_reference(loss, *args, reduction="sum", **kwargs)


@pytest.mark.parametrize("loss", ["hsigmoid_loss", "nce_loss"])
def test_empty_batch(loss):
    for reduction in REDUCTIONS:
        args, kwargs = MAKERS[loss](torch.float32, seed=1, batch=0, features=5)
        assert_close_to_reference(loss, *args, reduction=reduction, **kwargs)


@pytest.mark.parametrize("loss", ["hsigmoid_loss", "nce_loss"])
def test_no_grad_gives_no_graph(loss):
    args, kwargs = MAKERS[loss](torch.float32, seed=4, features=5)
    with torch.no_grad():
        result = getattr(F, loss)(*args, **kwargs)
    assert result.grad_fn is None and torch.isfinite(result)


@pytest.mark.parametrize("loss", ["hsigmoid_loss", "nce_loss"])
def test_deterministic(loss):
    # many samples on few rows: the scatter sums long segments; two runs must agree bit for bit
    args, kwargs = MAKERS[loss](torch.float16, seed=6, features=20, num_classes=3)

    def run():
        leaves = [a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a) and a.requires_grad]
        loss_value = getattr(F, loss)(*args, reduction="none", **kwargs)
        grad_output = torch.linspace(-1, 2, loss_value.numel(), device=DEVICE, dtype=loss_value.dtype)
        return [loss_value.detach(), *torch.autograd.grad(loss_value, leaves, grad_output)]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("case", ["label", "path_table", "target", "noise_samples"])
def test_forward_kernel_records_the_index_check_on_cudas_path(case, monkeypatch):
    """With the checks queued as on CUDA, the forward kernel records the range check as it reads
    the indices (no torch op over them: the host's queueing is never reached): an index out of
    range raises the check's RuntimeError, and indices in range (-1 padding in a path table
    included) give the host path's values bit for bit."""
    def queued_by_torch_ops(*args):
        raise AssertionError("the check was queued by torch ops, not recorded by the kernel")
    if case in ("label", "path_table"):
        loss, message = "hsigmoid_loss", case
        args, kwargs = hsigmoid_args(torch.float32, seed=2, features=5, bias=False,
                                     custom=case == "path_table")
    else:
        loss, message = "nce_loss", f"{case} out of range"
        args, kwargs = nce_args(torch.float32, seed=2, features=5)
    args = [a.detach() if torch.is_tensor(a) else a for a in args]
    indices = kwargs[case] if case in kwargs else args[{"label": 1, "target": 1,
                                                        "noise_samples": 4}[case]]
    expected = getattr(F, loss)(*args, reduction="none", **kwargs)
    monkeypatch.setattr(_args, "_queue_check", queued_by_torch_ops)
    with _args.checks_queued_as_on_cuda():
        assert torch.equal(getattr(F, loss)(*args, reduction="none", **kwargs), expected)
        original = indices.clone()
        for bad in (-2, 12):  # 12: past the classes and nodes of every case
            indices.view(-1)[3] = bad
            with pytest.raises(RuntimeError, match=message):
                getattr(F, loss)(*args, reduction="mean", **kwargs)
            indices.copy_(original)
