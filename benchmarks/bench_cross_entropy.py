"""Cross entropy, forward and forward + backward: fusedloss against torch eager, torch.compile and
Liger-Kernel (when `liger_kernel` is importable; otherwise that column is skipped and the script
says so), all measured in the same process on the same logits and targets.

Each row is timed with triton.testing.do_bench (median, with the 20% and 80% quantiles). The
bandwidth bound is one read of the logits (forward) plus one write of their gradient
(forward + backward); "GB/s" and "% bound" use those bytes, so every implementation is measured
against the same yardstick. "peak MiB" is the memory a call allocates beyond its inputs.
"rel. time" is a row's time over fusedloss's at the same size (above 1: fusedloss is faster).
Liger and `fusedloss inplace` keep the gradient in the logits' storage; the others allocate it.

    python benchmarks/bench_cross_entropy.py [--csv out.csv] [--peak-gbps 3350]
    TRITON_INTERPRET=1 python benchmarks/bench_cross_entropy.py --smoke   # CPU, tiny size
"""
import argparse

from common import (benchmark_device, device_label, measure_ms,
                    peak_extra_mib, print_table, write_csv)

TOKENS = (4096, 16384)
VOCABULARIES = (32000, 128256, 256000)
DTYPES = ("bf16", "fp32")
MODES = ("fwd", "fwd+bwd")
SMOKE = {"tokens": (4,), "vocabularies": (1500,), "dtypes": ("fp32", "bf16")}


def implementations(cuda, smoke):
    """name -> loss(logits, target); peers that cannot run here are left out with a note."""
    import torch
    import torch.nn.functional as TF

    import fusedloss.functional as F
    impls = {
        "fusedloss": F.cross_entropy,
        "fusedloss inplace": lambda x, t: F.cross_entropy(x, t, inplace_backward=True),
        "torch": TF.cross_entropy,
    }
    notes = []
    if smoke:
        notes.append("torch.compile skipped in smoke mode (compile time)")
    else:
        impls["torch.compile"] = torch.compile(TF.cross_entropy, dynamic=False)
    try:
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
    except ImportError:
        notes.append("Liger-Kernel not installed: its column is skipped")
    else:
        if cuda:
            impls["liger"] = LigerCrossEntropyLoss()
        else:
            notes.append("Liger-Kernel needs CUDA: its column is skipped")
    return impls, notes


def run_case(name, fn, num_tokens, vocabulary, dtype, mode, device, peak_gbps):
    import torch
    cuda = device.type == "cuda"
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(num_tokens, vocabulary, device=device, dtype=dtype, generator=generator)
    target = torch.randint(0, vocabulary, (num_tokens,), device=device, generator=generator)
    target[::50] = -100
    backward = mode == "fwd+bwd"
    x.requires_grad_(backward)

    def step():
        loss = fn(x, target)
        if backward:
            loss.backward()

    step()  # warm-up: compiles kernels (and traces them under the interpreter)
    x.grad = None
    peak = peak_extra_mib(step, cuda)
    x.grad = None
    median, q20, q80 = measure_ms(step, x, cuda)
    element = x.element_size()
    moved = num_tokens * vocabulary * element * (2 if backward else 1)
    gbps = moved / (median * 1e-3) / 1e9
    return {"impl": name, "ms": median, "ms_q20": q20, "ms_q80": q80, "GB/s": gbps,
            "% bound": 100 * gbps / peak_gbps, "peak MiB": peak}


def fits(num_tokens, vocabulary, element, device):
    """The logits and one gradient of their size must fit (peers may still run out: OOM rows)."""
    import torch
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info()
    return 2 * num_tokens * vocabulary * element < 0.9 * free


TABLE_COLUMNS = [("dtype", "{}"), ("N", "{}"), ("V", "{}"), ("mode", "{}"), ("impl", "{}"),
                 ("ms", "{:.3f}"), ("GB/s", "{:.0f}"), ("% bound", "{:.1f}"),
                 ("peak MiB", "{:.0f}"), ("rel. time", "{:.2f}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny size through the Triton interpreter (CPU) so the script cannot rot")
    parser.add_argument("--csv", help="write the results (with device and versions) to this CSV")
    parser.add_argument("--peak-gbps", type=float, default=3350.0,
                        help="HBM bandwidth for the %% bound column (default: H100 SXM, 3350)")
    args = parser.parse_args()

    import torch
    device = benchmark_device(parser, args.smoke)
    cuda = device.type == "cuda"
    import triton

    import fusedloss

    tokens = SMOKE["tokens"] if args.smoke else TOKENS
    vocabularies = SMOKE["vocabularies"] if args.smoke else VOCABULARIES
    dtypes = SMOKE["dtypes"] if args.smoke else DTYPES
    impls, notes = implementations(cuda, args.smoke)
    device_name = device_label(device)
    try:
        import liger_kernel
        liger_version = getattr(liger_kernel, "__version__", "installed")
    except ImportError:
        liger_version = "not installed"
    versions = {"device": device_name, "torch": torch.__version__, "triton": triton.__version__,
                "fusedloss": fusedloss.__version__, "liger_kernel": liger_version}
    print(", ".join(f"{k} {v}" for k, v in versions.items()))
    for note in notes:
        print(f"note: {note}")

    rows = []
    for dtype_name in dtypes:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        for num_tokens in tokens:
            for vocabulary in vocabularies:
                if not fits(num_tokens, vocabulary, torch.finfo(dtype).bits // 8, device):
                    print(f"skip {dtype_name} N={num_tokens} V={vocabulary}: exceeds memory")
                    continue
                for mode in MODES:
                    if "torch.compile" in impls:  # fresh compile per size: no recompile limit
                        torch._dynamo.reset()
                    case = []
                    for name, fn in impls.items():
                        try:
                            result = run_case(name, fn, num_tokens, vocabulary, dtype, mode,
                                              device, args.peak_gbps)
                        except torch.cuda.OutOfMemoryError:
                            result = {"impl": name, "ms": float("nan"), "ms_q20": float("nan"),
                                      "ms_q80": float("nan"), "GB/s": float("nan"),
                                      "% bound": float("nan"), "peak MiB": float("inf")}
                        if cuda:
                            torch.cuda.empty_cache()
                        case.append(result)
                    reference = case[0]["ms"]
                    for result in case:
                        rows.append({"dtype": dtype_name, "N": num_tokens, "V": vocabulary,
                                     "mode": mode, **result,
                                     "rel. time": result["ms"] / reference})
    print_table(rows, TABLE_COLUMNS)
    if args.csv:
        write_csv(args.csv, rows, versions)


if __name__ == "__main__":
    main()
