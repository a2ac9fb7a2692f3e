"""vocab_parallel_cross_entropy on two gloo ranks, each rank's sweep through the row kernel (the
interpreter's), equals the gather-then-cross-entropy reference (values and each rank's slice of
the gradient), and the fused-projection variant equals the plain projection + cross entropy on
the whole vocabulary."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedloss
from fusedloss import _args, distributed, reference

# CPU tensors on every test device: the ranks talk over gloo on CPU tensors
pytestmark = pytest.mark.cpu_tensors

WORLD = 2
CASES = [dict(), dict(label_smoothing=0.2), dict(z_loss=1e-2, reduction="sum"),
         dict(reduction="none", label_smoothing=0.1, z_loss=1e-3)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        generator = torch.Generator().manual_seed(0)
        tokens, vocab, features = 6, 10, 4
        logits = torch.randn(tokens, vocab, generator=generator, dtype=torch.float64) * 3
        target = torch.randint(0, vocab, (tokens,), generator=generator)
        target[1] = -100
        # the projection's shards have 1100 classes, more than the interpreter's row block
        # (1024): each rank's sweeps loop over blocks
        hidden = torch.randn(tokens, features, generator=generator, dtype=torch.float64)
        weight = torch.randn(2200, features, generator=generator, dtype=torch.float64)
        head_target = torch.randint(0, 2200, (tokens,), generator=generator)
        head_target[2] = -100
        shard = slice(rank * vocab // WORLD, (rank + 1) * vocab // WORLD)
        worst = 0.0
        for options in CASES:
            whole = logits.clone().requires_grad_()
            expected = reference.cross_entropy(whole, target, **options)
            grad_out = torch.rand_like(expected) + 0.5
            expected.backward(grad_out)
            local = logits[:, shard].clone().requires_grad_()
            got = distributed.vocab_parallel_cross_entropy(local, target, **options)
            got.backward(grad_out)
            gathered = local.detach().clone().requires_grad_()
            via_gather = reference.vocab_parallel_cross_entropy(gathered, target, **options)
            via_gather.backward(grad_out)
            worst = max(worst, (got - expected).abs().max().item(),
                        (local.grad - whole.grad[:, shard]).abs().max().item(),
                        (via_gather - expected).abs().max().item(),
                        (gathered.grad - whole.grad[:, shard]).abs().max().item())

        full_hidden = hidden.clone().requires_grad_()
        full_weight = weight.clone().requires_grad_()
        expected = reference.linear_cross_entropy(full_hidden, full_weight, head_target,
                                                  label_smoothing=0.1)
        expected.backward()
        local_hidden = hidden.clone().requires_grad_()
        local_weight = weight[rank * 1100:(rank + 1) * 1100].clone().requires_grad_()
        got = distributed.vocab_parallel_linear_cross_entropy(local_hidden, local_weight,
                                                              head_target, label_smoothing=0.1)
        got.backward()
        worst = max(worst, (got - expected).abs().item(),
                    (local_hidden.grad - full_hidden.grad).abs().max().item(),
                    (local_weight.grad - full_weight.grad[rank * 1100:(rank + 1) * 1100]
                     ).abs().max().item())
        results[rank] = (worst, type(got.grad_fn).__name__, _queued_checks(logits[:, shard],
                                                                          target, vocab))
    finally:
        dist.destroy_process_group()


def _queued_checks(local, target, vocab):
    """On CUDA's path (checks queued; the row kernel records the range check): per case, whether
    the loss and gradient equal the host path's bit for bit, and whether a target outside the
    whole vocabulary (and only such a target: the other rank's classes are in range) raised the
    queued RuntimeError, on both backends."""
    verdicts = []
    bad = target.clone()
    bad[3] = vocab  # one past the last class of the last shard
    for options in CASES:
        for backend in ("triton", "reference"):
            with fusedloss.use_backend(backend):
                host = local.clone().requires_grad_()
                expected = distributed.vocab_parallel_cross_entropy(host, target, **options)
                expected.sum().backward()
                queued = local.clone().requires_grad_()
                with _args.checks_queued_as_on_cuda():
                    got = distributed.vocab_parallel_cross_entropy(queued, target, **options)
                    got.sum().backward()
                    try:
                        distributed.vocab_parallel_cross_entropy(local, bad, **options)
                        refused = False
                    except RuntimeError as error:
                        refused = f"out of bounds for {vocab} classes" in str(error)
            verdicts.append((backend, torch.equal(got, expected),
                             torch.equal(queued.grad, host.grad), refused))
    return verdicts


def test_vocab_parallel_matches_whole_vocabulary_cross_entropy():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
    assert sorted(results.keys()) == list(range(WORLD))
    for rank, (worst, node, queued) in results.items():
        assert worst < 1e-12, f"rank {rank}: worst difference {worst}"
        assert node == "PrecomputedGradientBackward", node  # each rank's sweep ran the row kernel
        assert len(queued) == 2 * len(CASES)
        for backend, same_loss, same_grad, refused in queued:
            assert same_loss and same_grad, f"rank {rank}, {backend}: CUDA's path changed values"
            assert refused, f"rank {rank}, {backend}: an out-of-range target was not refused"


def test_target_out_of_range_raises_before_communication():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        with pytest.raises(IndexError):
            distributed.vocab_parallel_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 9]))
        with pytest.raises(ValueError):
            distributed.vocab_parallel_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1]))
    finally:
        dist.destroy_process_group()
