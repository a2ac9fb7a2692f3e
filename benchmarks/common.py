"""What every benchmark script times and records alike."""
import csv
import time


def measure_ms(step, grad_tensor, cuda):
    """(median, q20, q80) milliseconds of `step()`; grad_tensor.grad is cleared between runs.

    On CUDA: triton.testing.do_bench (it warms up and flushes the L2 between runs). On the CPU
    interpreter (smoke runs only): one warm-up launch, which traces the kernels, then 3 timed runs.
    """
    if cuda:
        import triton.testing
        return tuple(triton.testing.do_bench(step, grad_to_none=[grad_tensor], quantiles=[0.5, 0.2, 0.8]))
    step()
    times = []
    for _ in range(3):
        grad_tensor.grad = None
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[1], times[0], times[-1]


def write_csv(path, rows, context=None):
    """Rows (dicts with the same keys) to CSV, each prefixed with `context` (device, versions)."""
    context = context or {}
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(context) + list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**context, **row})
    print(f"wrote {path}")
