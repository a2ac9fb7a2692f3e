"""What every benchmark script sets up, times and records alike."""
import csv
import os
import time


def benchmark_device(parser, smoke):
    """The torch.device to measure on: CUDA, or with --smoke the CPU through the Triton
    interpreter (switched on here, before triton is first imported). Exits where fusedloss would
    run its reference rather than its kernels, since that would measure the wrong thing."""
    import torch
    cuda = torch.cuda.is_available() and not smoke
    if not cuda:
        if not smoke:
            parser.error("no CUDA device: run with --smoke (tiny sizes through the Triton interpreter)")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from fusedloss import _backend
    device = torch.device("cuda" if cuda else "cpu")
    if _backend.resolve(device) != "triton":
        raise SystemExit(f"fusedloss would run its reference on {device}: set TRITON_INTERPRET=1")
    return device


def device_label(device):
    """The name every benchmark records for `device`: the GPU's, or the CPU's with the note that
    the kernels ran through the interpreter."""
    import platform

    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}), interpreter"


def peak_extra_mib(step, cuda):
    """Memory one call of `step` allocates beyond what is already held (its inputs), in MiB."""
    if not cuda:
        return float("nan")
    import torch
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


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


def print_table(rows, columns):
    """An aligned table of `rows` (dicts); columns: (key, format) pairs in print order."""
    cells = [[fmt.format(row[key]) for key, fmt in columns] for row in rows]
    widths = [max(len(key), *(len(line[i]) for line in cells)) for i, (key, _) in enumerate(columns)]
    print("  ".join(key.rjust(width) for (key, _), width in zip(columns, widths)))
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def write_csv(path, rows, context=None):
    """Rows (dicts with the same keys) to CSV, each prefixed with `context` (device, versions)."""
    context = context or {}
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(context) + list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**context, **row})
    print(f"wrote {path}")
