"""Host synchronisations per call of the sequence losses, counted on the CPU.

A sync is a read of a tensor's value into Python (item, tolist, bool/int/float, nonzero, boolean
indexing, ...): on a GPU each one waits for the device. The count patches those entry points.
Value checks read their verdict on the host only for CPU tensors (`_args.checks_on_host`); the
counts below switch that to the CUDA branch (checks queued on the device), so what is counted is
what a GPU call runs: CTC reads its lengths once, as torch does; the CRF reads nothing.
"""
import contextlib

import pytest
import torch

from fusedloss import _args
from fusedloss import functional as F

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy",
         "masked_select", "unique")


@contextlib.contextmanager
def counting_host_reads(monkeypatch):
    """Yields a list that collects the name of every host read made inside the block."""
    reads = []

    def counted(name, original):
        def wrapper(*args, **kwargs):
            reads.append(name)
            return original(*args, **kwargs)
        return wrapper

    def getitem(self, index, original=torch.Tensor.__getitem__):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            reads.append("boolean indexing")  # its result's size depends on the values
        return original(self, index)

    with monkeypatch.context() as patch:
        patch.setattr(_args, "checks_on_host", lambda device: False)
        for name in READS:
            patch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
        patch.setattr(torch, "nonzero", counted("nonzero", torch.nonzero))
        patch.setattr(torch.Tensor, "__getitem__", getitem)
        yield reads


def test_the_counter_sees_each_kind_of_read(monkeypatch):
    x = torch.arange(4)
    with counting_host_reads(monkeypatch) as reads:
        x.max().item(), x.tolist(), bool(x[0]), int(x[1]), x[x > 1], x.nonzero()
    assert reads == ["item", "tolist", "__bool__", "__int__", "boolean indexing", "nonzero"]


def _ctc_call(concatenated):
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(6, 2, 5, generator=generator).log_softmax(-1).requires_grad_()
    targets = torch.tensor([[1, 2, 2], [3, 1, 0]])
    target_lengths = torch.tensor([3, 2])
    if concatenated:
        targets = torch.tensor([1, 2, 2, 3, 1])
    return log_probs, targets, torch.tensor([6, 5]), target_lengths


@pytest.mark.parametrize("concatenated", [False, True], ids=["padded", "concatenated"])
def test_ctc_reads_its_lengths_once(monkeypatch, concatenated):
    log_probs, *rest = _ctc_call(concatenated)
    with counting_host_reads(monkeypatch) as reads:
        F.ctc_loss(log_probs, *rest).backward()
    assert reads == ["tolist"]
    assert log_probs.grad.abs().sum() > 0


def _crf_call():
    generator = torch.Generator().manual_seed(0)
    emissions = torch.randn(2, 4, 3, generator=generator, requires_grad=True)
    transitions = torch.randn(3, 3, generator=generator, requires_grad=True)
    start, end = torch.randn(2, 3, generator=generator).unbind(0)
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    tags = torch.tensor([[0, 2, 1, 1], [2, 2, 0, -1]])
    return emissions, tags, transitions, start, end, mask


def test_crf_with_a_tensor_mask_reads_nothing(monkeypatch):
    emissions, tags, transitions, start, end, mask = _crf_call()
    with counting_host_reads(monkeypatch) as reads:
        F.crf_nll(emissions, tags, transitions, start, end, mask).backward()
        F.crf_marginals(emissions, transitions, start, end, mask).sum().backward()
        F.crf_decode(emissions.detach(), transitions, start, end, mask)
    assert reads == []
    assert emissions.grad.abs().sum() > 0 and transitions.grad.abs().sum() > 0


def test_checks_queued_on_the_device_still_refuse_bad_input(monkeypatch):
    # torch._assert_async raises at once on the CPU: the queued branch refuses what the host
    # branch refuses (with RuntimeError, the device assertion's type)
    emissions, tags, transitions, start, end, mask = _crf_call()
    late_start = mask.clone()
    late_start[1, 0] = False
    log_probs, targets, input_lengths, target_lengths = _ctc_call(False)
    with counting_host_reads(monkeypatch):
        with pytest.raises(RuntimeError, match="first timestep"):
            F.crf_nll(emissions, tags, transitions, start, end, late_start)
        with pytest.raises(RuntimeError, match="tag indices"):
            F.crf_nll(emissions, tags + 3, transitions, start, end, mask)
        with pytest.raises(RuntimeError, match="label out of range"):
            F.ctc_loss(log_probs, targets + 4, input_lengths, target_lengths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync-debug mode needs a GPU")
def test_no_sync_on_cuda():
    # the same calls under CUDA's own detector, which raises on any synchronising operation
    device = torch.device("cuda")
    crf = [x.to(device) if isinstance(x, torch.Tensor) else x for x in _crf_call()]
    crf[0] = crf[0].detach().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        F.crf_nll(*crf).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
