"""CTC loss, forward + backward: fusedloss against torch's native CTC (and cuDNN's where torch
would take it), measured in the same process on the same inputs.

Two input kinds, each with its own peer:
  log_probs  fusedloss.ctc_loss(log_probs)            vs torch ctc_loss(log_probs), cuDNN off,
                                                         and with cuDNN allowed when eligible
  logits     fusedloss.ctc_loss_with_logits(logits)   vs torch ctc_loss(log_softmax(logits))
Sizes are speech-like: T frames of N = 32 utterances, a character (C = 32) or BPE (C = 1000,
5000) vocabulary, targets of S_max labels (lengths drawn in [S_max/2, S_max]), every input at
its full length T. cuDNN's CTC is tried only where torch can use it: blank 0, fp32, int32
concatenated targets on the CPU, all input lengths T, labels and target lengths at most 256.
Timing is triton.testing.do_bench (median, 20%/80% quantiles) of loss + backward;
"speedup" is the peer's time (torch native on the same input kind) over the row's.

    python benchmarks/bench_ctc.py [--csv out.csv]
    TRITON_INTERPRET=1 python benchmarks/bench_ctc.py --smoke   # CPU, tiny size
"""
import argparse

from common import benchmark_device, device_label, measure_ms, print_table, write_csv

# (T, N, C, S_max)
SIZES = ((500, 32, 32, 100), (1000, 32, 32, 200), (1000, 32, 1000, 150), (1500, 32, 5000, 300))
SMOKE_SIZES = ((12, 2, 6, 3),)


def make_inputs(num_frames, batch, num_classes, max_target, device):
    import torch
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(num_frames, batch, num_classes, generator=generator).to(device)
    target_lengths = torch.randint(max(max_target // 2, 1), max_target + 1, (batch,),
                                   generator=generator)
    targets = torch.randint(1, num_classes, (batch, max_target), generator=generator)
    input_lengths = torch.full((batch,), num_frames, dtype=torch.int64)
    return logits, targets, input_lengths, target_lengths


def implementations(torch_cudnn_eligible):
    """name -> (input kind, loss(x, padded, flat, input_lengths, target_lengths)); `flat` is the
    concatenated int32 CPU targets cuDNN wants."""
    import torch
    import torch.nn.functional as TF

    import fusedloss.functional as F

    def torch_native(x, targets, flat, il, tl):
        with torch.backends.cudnn.flags(enabled=False):
            return TF.ctc_loss(x, targets.to(x.device), il.to(x.device), tl.to(x.device))

    def torch_cudnn(x, targets, flat, il, tl):
        with torch.backends.cudnn.flags(enabled=True):
            return TF.ctc_loss(x, flat, il.int(), tl.int())

    def torch_logits(x, targets, flat, il, tl):
        return torch_native(x.log_softmax(-1), targets, flat, il, tl)

    impls = {
        "fusedloss": ("log_probs", lambda x, targets, flat, il, tl: F.ctc_loss(
            x, targets.to(x.device), il.to(x.device), tl.to(x.device))),
        "torch": ("log_probs", torch_native),
    }
    if torch_cudnn_eligible:
        impls["torch cudnn"] = ("log_probs", torch_cudnn)
    impls["fusedloss with_logits"] = ("logits", lambda x, targets, flat, il, tl:
                                      F.ctc_loss_with_logits(x, targets.to(x.device),
                                                             il.to(x.device), tl.to(x.device)))
    impls["torch log_softmax+ctc"] = ("logits", torch_logits)
    return impls


def run_size(size, device, cuda):
    import torch
    num_frames, batch, num_classes, max_target = size
    logits, targets, input_lengths, target_lengths = make_inputs(*size, device)
    log_probs = logits.log_softmax(-1)
    flat = torch.cat([row[:n] for row, n in zip(targets, target_lengths.tolist())]).int()
    eligible = cuda and num_classes <= 256 and max_target <= 256
    rows = []
    for name, (kind, fn) in implementations(eligible).items():
        x = (log_probs if kind == "log_probs" else logits).detach().requires_grad_()

        def step():
            fn(x, targets, flat, input_lengths, target_lengths).backward()

        median, q20, q80 = measure_ms(step, x, cuda)
        rows.append({"T": num_frames, "N": batch, "C": num_classes, "S": max_target,
                     "input": kind, "impl": name, "ms": median, "ms_q20": q20, "ms_q80": q80})
    for row in rows:
        peer = next(r["ms"] for r in rows
                    if r["input"] == row["input"] and r["impl"].startswith("torch"))
        row["speedup"] = peer / row["ms"]
    return rows


TABLE_COLUMNS = [("T", "{}"), ("N", "{}"), ("C", "{}"), ("S", "{}"), ("input", "{}"), ("impl", "{}"),
                 ("ms", "{:.3f}"), ("ms_q20", "{:.3f}"), ("ms_q80", "{:.3f}"), ("speedup", "{:.2f}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny size through the Triton interpreter (CPU) so the script "
                             "cannot rot")
    parser.add_argument("--csv", help="write the results (with device and versions) to this CSV")
    args = parser.parse_args()

    import torch
    device = benchmark_device(parser, args.smoke)
    cuda = device.type == "cuda"
    import triton

    import fusedloss
    device_name = device_label(device)
    versions = {"device": device_name, "torch": torch.__version__, "triton": triton.__version__,
                "fusedloss": fusedloss.__version__,
                "cudnn": str(torch.backends.cudnn.version()) if cuda else "n/a"}
    print(", ".join(f"{k} {v}" for k, v in versions.items()))

    rows = []
    for size in SMOKE_SIZES if args.smoke else SIZES:
        rows += run_size(size, device, cuda)
        if cuda:
            torch.cuda.empty_cache()
    print_table(rows, TABLE_COLUMNS)
    if args.csv:
        write_csv(args.csv, rows, versions)


if __name__ == "__main__":
    main()
