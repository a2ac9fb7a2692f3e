"""Linear + cross entropy, forward + backward (gradients of the hidden states and the weight):
fusedloss against torch eager (the (N, V) logits materialised), torch's chunked
F.linear_cross_entropy (torch >= 2.13, `options=torch.nn.LinearCrossEntropyOptions()`),
cut-cross-entropy and Liger-Kernel's fused linear cross entropy (each when importable and on
CUDA; otherwise its column is skipped and the script says so), all in the same process on the
same inputs.

Each row is timed with triton.testing.do_bench (median, with the 20% and 80% quantiles). The
work is three (N, H) x (H, V) matmuls (logits, grad of the hidden states, grad of the weight):
"TFLOP/s" and "% peak" use those 6 N H V flops for every implementation. "peak MiB" is the
memory a call allocates beyond its inputs (the gradients it returns included). "rel. time" and
"rel. mem" are a row's over fusedloss's at the same size (above 1: fusedloss is better).

    python benchmarks/bench_linear_cross_entropy.py [--csv out.csv] [--peak-tflops 989]
    TRITON_INTERPRET=1 python benchmarks/bench_linear_cross_entropy.py --smoke   # CPU, tiny
"""
import argparse

from common import (benchmark_device, device_label, measure_ms,
                    peak_extra_mib, print_table, write_csv)

TOKENS = (4096, 16384)
HIDDEN = 4096
VOCABULARIES = (32000, 128256, 256000)
SMOKE = {"tokens": (8,), "hidden": 16, "vocabularies": (1100,)}


def implementations(cuda):
    """name -> loss(hidden, weight, target); peers that cannot run here are left out with a note."""
    import torch
    import torch.nn.functional as TF

    import fusedloss.functional as F
    impls = {
        "fusedloss": F.linear_cross_entropy,
        "torch eager": lambda x, w, t: TF.cross_entropy(TF.linear(x, w), t),
    }
    notes = []
    if hasattr(torch.nn, "LinearCrossEntropyOptions"):
        options = torch.nn.LinearCrossEntropyOptions()
        impls["torch chunked"] = lambda x, w, t: TF.linear_cross_entropy(x, w, t, options=options)
    else:
        notes.append(f"torch {torch.__version__} has no LinearCrossEntropyOptions: "
                     "its chunked column is skipped")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
    except ImportError:
        notes.append("cut-cross-entropy not installed: its column is skipped")
    else:
        if cuda:
            impls["cut-cross-entropy"] = cce
        else:
            notes.append("cut-cross-entropy needs CUDA: its column is skipped")
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        notes.append("Liger-Kernel not installed: its column is skipped")
    else:
        if cuda:
            impls["liger"] = liger_fused_linear_cross_entropy
        else:
            notes.append("Liger-Kernel needs CUDA: its column is skipped")
    return impls, notes


def run_case(name, fn, num_tokens, hidden, vocabulary, dtype, device, peak_tflops):
    import torch
    cuda = device.type == "cuda"
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(num_tokens, hidden, device=device, dtype=dtype, generator=generator)
    w = torch.randn(vocabulary, hidden, device=device, dtype=dtype, generator=generator)
    w /= hidden ** 0.5  # logits of a few units, as after a trained model's final norm
    target = torch.randint(0, vocabulary, (num_tokens,), device=device, generator=generator)
    target[::50] = -100
    x.requires_grad_()
    w.requires_grad_()

    def step():
        # autograd.grad, not backward: no .grad accumulation kernel is timed
        return torch.autograd.grad(fn(x, w, target), (x, w))

    step()  # warm-up: compiles kernels (and traces them under the interpreter)
    peak = peak_extra_mib(step, cuda)
    median, q20, q80 = measure_ms(step, x, cuda)
    tflops = 6 * num_tokens * hidden * vocabulary / (median * 1e-3) / 1e12
    return {"impl": name, "ms": median, "ms_q20": q20, "ms_q80": q80, "TFLOP/s": tflops,
            "% peak": 100 * tflops / peak_tflops, "peak MiB": peak}


def failed(name, error):
    nan = float("nan")
    return {"impl": f"{name} ({error})", "ms": nan, "ms_q20": nan, "ms_q80": nan,
            "TFLOP/s": nan, "% peak": nan, "peak MiB": float("inf")}


TABLE_COLUMNS = [("dtype", "{}"), ("N", "{}"), ("H", "{}"), ("V", "{}"), ("impl", "{}"),
                 ("ms", "{:.3f}"), ("TFLOP/s", "{:.0f}"), ("% peak", "{:.1f}"),
                 ("peak MiB", "{:.0f}"), ("rel. time", "{:.2f}"), ("rel. mem", "{:.2f}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes through the Triton interpreter (CPU), against rot")
    parser.add_argument("--csv", help="write the results (with device and versions) to this CSV")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 tensor-core peak for the %% peak column "
                             "(default: H100 SXM, 989)")
    args = parser.parse_args()

    import torch
    device = benchmark_device(parser, args.smoke)
    cuda = device.type == "cuda"
    import triton

    import fusedloss

    tokens = SMOKE["tokens"] if args.smoke else TOKENS
    hidden = SMOKE["hidden"] if args.smoke else HIDDEN
    vocabularies = SMOKE["vocabularies"] if args.smoke else VOCABULARIES
    dtype = torch.bfloat16
    impls, notes = implementations(cuda)
    device_name = device_label(device)
    versions = {"device": device_name, "torch": torch.__version__, "triton": triton.__version__,
                "fusedloss": fusedloss.__version__}
    print(", ".join(f"{k} {v}" for k, v in versions.items()))
    for note in notes:
        print(f"note: {note}")

    rows = []
    for num_tokens in tokens:
        for vocabulary in vocabularies:
            case = []
            for name, fn in impls.items():
                try:
                    result = run_case(name, fn, num_tokens, hidden, vocabulary, dtype, device,
                                      args.peak_tflops)
                except torch.cuda.OutOfMemoryError:
                    result = failed(name, "out of memory")
                if cuda:
                    torch.cuda.empty_cache()
                case.append(result)
            ours = case[0]
            for result in case:
                rows.append({"dtype": "bf16", "N": num_tokens, "H": hidden, "V": vocabulary,
                             **result, "rel. time": result["ms"] / ours["ms"],
                             "rel. mem": result["peak MiB"] / ours["peak MiB"]})
    print_table(rows, TABLE_COLUMNS)
    if args.csv:
        write_csv(args.csv, rows, versions)


if __name__ == "__main__":
    main()
