"""Hierarchical sigmoid and NCE, forward + backward: fusedloss against the reference's torch ops
(eager) and torch.compile of them.

Each configuration runs the three on the same tensors in the same process: input (N, D), weight
and bias requiring grad (gradients of all three are taken), reduction 'mean', timed with
triton.testing.do_bench (median, 20% and 80% quantiles). hsigmoid uses the default tree over C
classes (paths of ~log2 C nodes, the root shared by every sample); NCE draws k negatives per
sample, uniformly or from the log-uniform (Zipf) sampler, whose frequent classes make long
segments for the weight-gradient scatter. "rel. time" is a row's time over fusedloss's (above
1: fusedloss is faster). The CSV is rewritten after each configuration, so a run cut short by a
time limit keeps what it measured.

    python benchmarks/bench_hsigmoid_nce.py [--csv out.csv] [--classes 10000 100000] [--dtypes fp32 bf16]
    python benchmarks/bench_hsigmoid_nce.py --smoke     # CPU: tiny sizes through the interpreter
"""
import argparse
import math

from common import benchmark_device, device_label, measure_ms, write_csv

FAMILIES = ("hsigmoid", "nce")  # the catalog's losses of these families are benchmarked
DTYPES = ("fp32", "bf16")
SAMPLERS = ("uniform", "log_uniform")


def make_inputs(loss, batch, features, num_classes, num_noise, sampler, dtype, device):
    """(args, leaves): the loss's positional arguments and the tensors that require grad."""
    import torch
    generator = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape, scale=1.0):
        t = torch.randn(shape, device=device, dtype=torch.float32, generator=generator) * scale
        return t.to(dtype).requires_grad_()

    rows = num_classes - 1 if loss == "hsigmoid_loss" else num_classes
    x, weight, bias = leaf(batch, features), leaf(rows, features, scale=features ** -0.5), leaf(rows)
    target = torch.randint(0, num_classes, (batch,), device=device, generator=generator)
    if loss == "hsigmoid_loss":
        return (x, target, num_classes, weight, bias), [x, weight, bias]
    if sampler == "uniform":
        log_q = torch.full((num_classes,), -math.log(num_classes), device=device)
    else:  # P(c) = log((c + 2) / (c + 1)) / log(C + 1), as word2vec's / TF's log-uniform sampler
        c = torch.arange(num_classes, device=device, dtype=torch.float64)
        log_q = (torch.log1p(1 / (c + 1)) / math.log(num_classes + 1)).log().float()
    noise = torch.multinomial(log_q.exp(), batch * num_noise, replacement=True,
                              generator=generator).reshape(batch, num_noise)
    return (x, target, weight, bias, noise, log_q.to(dtype)), [x, weight, bias]


def implementations(loss, compile_peer):
    import torch

    import fusedloss.functional as F
    from fusedloss import reference
    eager = getattr(reference, loss)
    impls = {"fusedloss": getattr(F, loss), "torch": eager}
    if compile_peer:
        impls["torch.compile"] = torch.compile(eager, dynamic=False)
    return impls


def measure(fn, args, leaves, cuda):
    """(median, q20, q80) milliseconds of one forward + backward."""
    import torch

    def step():
        torch.autograd.grad(fn(*args), leaves)
    return measure_ms(step, leaves[0], cuda)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny sizes through the Triton interpreter")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--noise", type=int, default=64, help="negatives per sample (NCE)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=DTYPES)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    from fusedloss import catalog
    losses = [info.name for info in catalog.LOSSES if info.family in FAMILIES]
    parser.add_argument("--losses", nargs="+", default=losses, choices=losses)
    args = parser.parse_args()

    import torch
    device = benchmark_device(parser, args.smoke)
    cuda = device.type == "cuda"
    import triton

    import fusedloss
    fusedloss.set_backend("triton")
    batch, features, classes, num_noise = ((args.batch, args.features, args.classes, args.noise) if cuda
                                           else (8, 20, [12], 3))
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    device_name = device_label(device)
    print(f"{device_name} | torch {torch.__version__} | triton {triton.__version__} | "
          f"N={batch} D={features} k={num_noise}")

    rows = []
    header = f"{'loss':14} {'noise':12} {'dtype':5} {'classes':>8} {'impl':14} {'ms':>9} {'rel. time':>10}"
    print(header)
    print("-" * len(header))
    for loss in args.losses:
        impls = implementations(loss, compile_peer=cuda)
        samplers = args.samplers if loss == "nce_loss" else ["-"]
        for dtype_name in args.dtypes:
            for num_classes in classes:
                for sampler in samplers:
                    inputs, leaves = make_inputs(loss, batch, features, num_classes, num_noise, sampler,
                                                 dtypes[dtype_name], device)
                    if not cuda:  # the smoke run also checks the kernel still agrees with the reference
                        torch.testing.assert_close(impls["fusedloss"](*inputs), impls["torch"](*inputs),
                                                   rtol=2e-2, atol=2e-2)
                    results = {name: measure(fn, inputs, leaves, cuda) for name, fn in impls.items()}
                    ours = results["fusedloss"][0]
                    for name, (ms, q20, q80) in results.items():
                        row = dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                                   loss=loss, noise=sampler, dtype=dtype_name, batch=batch,
                                   features=features, classes=num_classes,
                                   negatives=num_noise if loss == "nce_loss" else 0, impl=name, ms=ms,
                                   ms_q20=q20, ms_q80=q80, time_relative_to_fusedloss=ms / ours)
                        rows.append(row)
                        print(f"{loss:14} {sampler:12} {dtype_name:5} {num_classes:>8} {name:14} {ms:9.3f} "
                              f"{row['time_relative_to_fusedloss']:9.2f}x", flush=True)
                    del inputs, leaves
                    if args.csv:
                        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
