"""Host time: what the CPU spends on a loss call outside its kernels, forward + backward.

A GPU runs a small loss faster than the host can queue it: below a few hundred microseconds of
kernel time the call is bound by its Python, its torch ops and autograd, not by its bytes. This
measures that host path without a GPU: every Triton launch is skipped (the interpreter is
stubbed out; the launcher's own argument binding still runs on a GPU, about 10-20 us a launch,
and is not counted), the value checks are queued as on CUDA (each assert on a verdict that
holds: the skipped launches write none of the verdicts the kernels record), and the tensors
are tiny, so what is timed is the host's work alone. Beside it, torch's eager twin on the same
tiny CPU tensors: its host path plus a computation of a few elements. Times are this machine's (the best of five
runs of many calls); the ratio is what carries over.

    python benchmarks/host_time.py
"""
import os
import time


def _cases():
    """(name, fusedloss step, torch step, arguments): each step one call, forward (+ backward)."""
    import torch
    import torch.nn.functional as TF

    import fusedloss.functional as F
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 16, generator=generator, requires_grad=True)
    classes = torch.randint(0, 16, (8,), generator=generator)
    x = torch.randn(16, generator=generator, requires_grad=True)
    y = torch.rand(16, generator=generator)
    log_probs = torch.randn(8, 2, 5, generator=generator).log_softmax(-1).requires_grad_()
    labels = torch.randint(1, 5, (2, 3), generator=generator)
    lengths = torch.full((2,), 8), torch.full((2,), 3)

    def fwd_bwd(loss_fn, leaf):
        return lambda *args: torch.autograd.grad(loss_fn(*args), leaf)

    return [
        ("cross_entropy fwd+bwd", fwd_bwd(F.cross_entropy, logits), fwd_bwd(TF.cross_entropy, logits),
         (logits, classes)),
        ("cross_entropy fwd, no grad", F.cross_entropy, TF.cross_entropy, (logits.detach(), classes)),
        ("mse_loss fwd+bwd", fwd_bwd(F.mse_loss, x), fwd_bwd(TF.mse_loss, x), (x, y)),
        ("binary_cross_entropy_with_logits fwd+bwd", fwd_bwd(F.binary_cross_entropy_with_logits, x),
         fwd_bwd(TF.binary_cross_entropy_with_logits, x), (x, y)),
        ("ctc_loss fwd+bwd", fwd_bwd(F.ctc_loss, log_probs), fwd_bwd(TF.ctc_loss, log_probs),
         (log_probs, labels, *lengths)),
    ]


def _microseconds(step, args, calls, runs):
    for _ in range(max(calls // 10, 1)):
        step(*args)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            step(*args)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def measure(calls=1000, runs=5):
    """[(name, fusedloss us, torch us, launches per call)]: the best of `runs` runs of `calls`
    calls each. The interpreter must be on (TRITON_INTERPRET=1 before triton is imported)."""
    from triton.runtime.interpreter import InterpretedFunction

    from fusedloss import _args
    launches = [0]

    def skipped(self, *args, **kwargs):
        launches[0] += 1

    import torch
    real_assert, holds = torch._assert_async, torch.ones((), dtype=torch.bool)

    def assert_holding(verdict, *message):  # the same op, on a verdict no skipped launch wrote
        real_assert(holds, *message)

    rows = []
    real_run = InterpretedFunction.run
    InterpretedFunction.run, torch._assert_async = skipped, assert_holding
    try:
        with _args.checks_queued_as_on_cuda():
            for name, ours, theirs, args in _cases():
                launches[0] = 0
                ours(*args)
                per_call = launches[0]
                rows.append((name, _microseconds(ours, args, calls, runs),
                             _microseconds(theirs, args, calls, runs), per_call))
    finally:
        InterpretedFunction.run, torch._assert_async = real_run, real_assert
    return rows


def main():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    os.environ["FUSEDLOSS_LAUNCH_PARAMS"] = "gpu"
    print(f"{'call':<42} {'fusedloss us':>12} {'torch us':>9} {'ratio':>6} {'launches':>8}")
    for name, ours, theirs, launches in measure():
        print(f"{name:<42} {ours:>12.0f} {theirs:>9.0f} {ours / theirs:>6.1f} {launches:>8}")


if __name__ == "__main__":
    main()
