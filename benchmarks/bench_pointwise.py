"""Pointwise losses, forward + backward: fusedloss against torch eager and torch.compile.

For each loss, dtype and size the three run in the same process on the same tensors (input and
target; the gradient is taken w.r.t. the input, reduction 'mean'), timed with
triton.testing.do_bench (median, with the 20% and 80% quantiles). The bandwidth bound is one read
of input and target and one write of the input gradient; GB/s and "% bound" use those bytes, so
every implementation is measured against the same yardstick; "rel. time" is a row's time over
fusedloss's (above 1: fusedloss is faster). (Without a host sync the backward
cannot know grad_output is 1, so a fused loss still reads and rewrites its saved gradient once:
five tensor passes against the bound's three.)

    python benchmarks/bench_pointwise.py [--csv out.csv] [--peak-gbps 3350]
    python benchmarks/bench_pointwise.py --smoke       # CPU: tiny size through the interpreter
"""
import argparse

from common import benchmark_device, device_label, measure_ms, write_csv

FAMILIES = ("binary", "pointwise")  # the catalog's losses of these families can be chosen
DEFAULT_LOSSES = ("binary_cross_entropy_with_logits", "mse_loss", "smooth_l1_loss",
                  "sigmoid_focal_loss")  # one of each kind of math; the default run fits 60 s
DTYPES = ("bf16", "fp32")


def make_inputs(info, numel, dtype, device):
    import torch
    generator = torch.Generator(device=device).manual_seed(0)
    if info.name == "binary_cross_entropy":  # probabilities, away from the clamped logs
        x = torch.rand(numel, device=device, dtype=torch.float32, generator=generator) * 0.98 + 0.01
        x = x.to(dtype).requires_grad_()
    else:
        x = torch.randn(numel, device=device, dtype=dtype, generator=generator).requires_grad_()
    if info.family == "binary":
        y = torch.rand(numel, device=device, dtype=dtype, generator=generator)
    else:
        y = torch.randn(numel, device=device, dtype=dtype, generator=generator)
    return x, y


def implementations(info, compile_peer):
    """fusedloss, torch's eager twin (the reference's torch composition for a loss torch lacks,
    e.g. torchvision's sigmoid focal loss) and torch.compile of it, all with reduction 'mean'."""
    import functools

    import torch
    import torch.nn.functional as TF

    from fusedloss import reference
    eager = getattr(TF, info.twin) if info.twin else getattr(reference, info.name)
    impls = {"fusedloss": functools.partial(info.function, reduction="mean"),
             "torch": functools.partial(eager, reduction="mean")}
    if compile_peer:
        impls["torch.compile"] = torch.compile(impls["torch"], dynamic=False)
    return impls


def measure(fn, x, y, cuda):
    """(median, q20, q80) milliseconds of one forward + backward."""
    def step():
        fn(x, y).backward()
    return measure_ms(step, x, cuda)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: one tiny size through the Triton interpreter")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--peak-gbps", type=float, default=3350.0,
                        help="HBM bandwidth for the %% of bound (H100 SXM: 3350)")
    parser.add_argument("--log2-sizes", type=int, nargs="+", default=[24, 26, 28],
                        help="element counts as powers of two")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    from fusedloss import catalog
    losses = [info.name for info in catalog.LOSSES if info.family in FAMILIES]
    parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES), choices=losses)
    args = parser.parse_args()

    import torch
    device = benchmark_device(parser, args.smoke)
    cuda = device.type == "cuda"
    import triton

    import fusedloss
    fusedloss.set_backend("triton")
    sizes = [2 ** k for k in args.log2_sizes] if cuda else [4099]
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    device_name = device_label(device)
    print(f"{device_name} | torch {torch.__version__} | triton {triton.__version__} | peak {args.peak_gbps:.0f} GB/s")

    rows = []
    header = (f"{'loss':34} {'dtype':5} {'elements':>10} {'impl':14} {'ms':>9} {'GB/s':>8} {'% bound':>8} "
              f"{'rel. time':>10}")
    print(header)
    print("-" * len(header))
    for loss in args.losses:
        info = catalog.get(loss)
        impls = implementations(info, compile_peer=cuda)
        for dtype_name in args.dtypes:
            dtype = dtypes[dtype_name]
            for numel in sizes:
                x, y = make_inputs(info, numel, dtype, device)
                if not cuda:  # the smoke run also checks the kernel still agrees with torch
                    torch.testing.assert_close(impls["fusedloss"](x, y), impls["torch"](x, y), rtol=2e-2, atol=2e-2)
                bound_bytes = numel * x.element_size() * 3  # read input and target, write the gradient
                results = {name: measure(fn, x, y, cuda) for name, fn in impls.items()}
                ours = results["fusedloss"][0]
                for name, (ms, q20, q80) in results.items():
                    gbps = bound_bytes / ms / 1e6
                    row = dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                               loss=loss, dtype=dtype_name, elements=numel, impl=name, ms=ms, ms_q20=q20,
                               ms_q80=q80, gbps=gbps, pct_bound=100 * gbps / args.peak_gbps,
                               time_relative_to_fusedloss=ms / ours)
                    rows.append(row)
                    print(f"{loss:34} {dtype_name:5} {numel:>10} {name:14} {ms:9.3f} {gbps:8.1f} "
                          f"{row['pct_bound']:7.1f}% {row['time_relative_to_fusedloss']:9.2f}x")
                del x, y

    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
