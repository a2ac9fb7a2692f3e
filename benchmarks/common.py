"""What every benchmark family sets up, times and records alike.

A family is a `bench_<family>.py` module with `AXIS` (what its plots put on the x axis: a
vocabulary size, a sequence length, an element count) and `run(device, quick, peaks)`, which
measures fusedloss and every peer importable here on the same inputs in the same process and
returns `(rows, notes)`: rows made with `row(...)`, notes saying which peers were left out and
why. `python -m fusedloss bench` (benchmarks/report.py) runs the families and writes the table,
the CSV and the plots; running a family's script is the same command for that family alone.
"""
import math
import os
import sys
import time

# Every family's rows have these keys, in this order (the CSV's columns after CONTEXT).
COLUMNS = ("family", "case", "dtype", "axis", "size", "impl", "ms", "ms_q20", "ms_q80",
           "ratio_to_fastest", "pct_of_bound", "peak_mib", "note")
# Written into every CSV row: where and with what the row was measured, and the bandwidth its
# "% of bound" is taken at.
CONTEXT = ("device", "torch", "triton", "fusedloss", "date", "bandwidth")

# Datasheet peaks (HBM GB/s, dense bf16 TFLOP/s), by a substring of torch.cuda.get_device_name;
# more specific names first. The bandwidth bound of "% of bound" is the device-to-device copy
# bandwidth measured at the start of the run (copy_bandwidth_gbps), what a memory-bound kernel
# can reach there; the datasheet figure is printed beside it and the TFLOP/s are the
# datasheet's. --peak-gbps / --peak-tflops override both.
DATASHEET_PEAKS = (("H100 PCIe", 2000.0, 756.0), ("H200", 4800.0, 989.0), ("H100", 3350.0, 989.0),
                   ("A100", 2039.0, 312.0))


def datasheet_peaks(device_name):
    """(GB/s, TFLOP/s) of the named GPU, or (None, None) for a device not in the table."""
    for key, gbps, tflops in DATASHEET_PEAKS:
        if key in device_name:
            return gbps, tflops
    return None, None


def copy_bandwidth_gbps(device, size_bytes=2**30):
    """GB/s of a device-to-device copy of `size_bytes` (one read and one write of each byte),
    the median of triton.testing.do_bench; None off CUDA."""
    if device.type != "cuda":
        return None
    import torch
    import triton.testing
    source = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    ms = triton.testing.do_bench(lambda: target.copy_(source), return_mode="median")
    del source, target
    torch.cuda.empty_cache()
    return 2 * size_bytes / (ms * 1e-3) / 1e9


class Peaks:
    """The device's peak bandwidth and matmul rate; turns a call's bound work into % of bound."""

    def __init__(self, gbps=None, tflops=None):
        self.gbps, self.tflops = gbps, tflops

    def pct_of_bytes(self, moved_bytes, ms):
        return _pct(moved_bytes / (self.gbps * 1e9) if self.gbps else None, ms)

    def pct_of_flops(self, flops, ms):
        return _pct(flops / (self.tflops * 1e12) if self.tflops else None, ms)


def _pct(bound_s, ms):
    return None if bound_s is None or not ms == ms else 100 * bound_s / (ms * 1e-3)


def kernel_device(quick):
    """The torch.device to measure on: CUDA, or with `quick` and no CUDA the CPU through the
    Triton interpreter (TRITON_INTERPRET=1 must be set before triton is imported; the bench
    command sets it). Raises where fusedloss would run its reference instead of its kernels,
    since that measures the wrong thing."""
    import torch

    from fusedloss import _backend
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not quick:
        raise RuntimeError("no CUDA device: only --quick runs on the CPU (tiny sizes through the "
                           "Triton interpreter)")
    if not _backend.interpreting():
        raise RuntimeError("fusedloss would run its reference on the CPU: set TRITON_INTERPRET=1 "
                           "before triton is imported")
    return torch.device("cpu")


def device_label(device):
    """The name every benchmark records for `device`: the GPU's, or the CPU's with the note that
    the kernels ran through the interpreter."""
    import platform

    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}), interpreter"


def peak_extra_mib(step, device):
    """Memory one call of `step` allocates beyond what is already held (its inputs), in MiB;
    None on the CPU, where torch keeps no allocation statistics."""
    if device.type != "cuda":
        return None
    import torch
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure_ms(step, grad_tensors, device):
    """(median, q20, q80) milliseconds of `step()`; the `.grad` of each of grad_tensors is cleared
    between runs.

    On CUDA: triton.testing.do_bench (it warms up and flushes the L2 between runs). On the CPU
    interpreter (quick runs only, which keep the outputs alive rather than measure speed): one
    run, since the interpreter compiles nothing to warm up and each call costs seconds.
    """
    if device.type == "cuda":
        import triton.testing
        return tuple(triton.testing.do_bench(step, grad_to_none=list(grad_tensors),
                                             quantiles=[0.5, 0.2, 0.8]))
    start = time.perf_counter()
    step()
    elapsed = (time.perf_counter() - start) * 1e3
    for tensor in grad_tensors:
        tensor.grad = None
    return elapsed, elapsed, elapsed


def time_and_memory(step, grad_tensors, device):
    """{ms, ms_q20, ms_q80, peak_mib} of `step`, or the row's note when the device ran out of
    memory (a peer that cannot fit is a result, not a crash)."""
    import torch

    def clear():
        for tensor in grad_tensors:
            tensor.grad = None
    try:
        if device.type == "cuda":
            step()  # compiles the kernels, so neither compile time nor its memory is counted
            clear()
        peak = peak_extra_mib(step, device)
        clear()
        median, q20, q80 = measure_ms(step, grad_tensors, device)
    except torch.cuda.OutOfMemoryError:
        return {"ms": math.nan, "ms_q20": math.nan, "ms_q80": math.nan, "peak_mib": None,
                "note": "out of memory"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"ms": median, "ms_q20": q20, "ms_q80": q80, "peak_mib": peak, "note": ""}


def row(family, case, dtype, axis, size, impl, measured, pct_of_bound=None):
    """One result in the common schema (COLUMNS); ratio_to_fastest is filled by rank()."""
    return {"family": family, "case": case, "dtype": dtype, "axis": axis, "size": size,
            "impl": impl, **measured, "ratio_to_fastest": None, "pct_of_bound": pct_of_bound}


def rank(rows):
    """Fill each row's ratio_to_fastest: its time over the fastest implementation's on the same
    case, dtype and size (1.0 is the fastest)."""
    def key(r):
        return r["family"], r["case"], r["dtype"], r["size"]
    fastest = {}
    for r in rows:
        if r["ms"] == r["ms"]:
            fastest[key(r)] = min(fastest.get(key(r), math.inf), r["ms"])
    for r in rows:
        best = fastest.get(key(r))
        r["ratio_to_fastest"] = r["ms"] / best if best and r["ms"] == r["ms"] else None
    return rows


def script_main(family):
    """`python benchmarks/bench_<family>.py [--quick] [--out DIR] ...` is
    `python -m fusedloss bench --family <family> ...`: one entry point, one output format."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fusedloss.__main__ import main
    sys.exit(main(["bench", "--family", family, *sys.argv[1:]]))
