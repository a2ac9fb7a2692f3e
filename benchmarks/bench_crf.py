"""Linear-chain CRF: fusedloss against pytorch-crf (torchcrf), in the same run on the same tensors.

Two measurements per size (batch B, steps T, tags K; each sequence's length is drawn between T/2
and T, a prefix mask; float32 emissions as pytorch-crf takes them):
  nll     forward + backward of the summed log-likelihood of a CRF module (fusedloss.nn.CRF and
          torchcrf.CRF with the same parameters, batch_first), gradients w.r.t. the emissions
          and the three transition parameters.
  decode  Viterbi: fusedloss.functional.crf_decode (tags as a (B, T) tensor, -1 padded) against
          torchcrf.CRF.decode (lists; its backtrack runs on the host, which is part of its cost),
          and fusedloss.nn.CRF.decode (the same lists, so the comparison is like for like).
Timed with triton.testing.do_bench (median with the 20% and 80% quantiles); "speed-up" is
pytorch-crf's time over fusedloss's. There is no bandwidth bound here: both are latency-bound
recursions over T steps.

    python benchmarks/bench_crf.py [--csv out.csv]
    python benchmarks/bench_crf.py --smoke       # CPU: one tiny size through the interpreter
"""
import argparse
import itertools
import warnings

from common import benchmark_device, device_label, measure_ms, write_csv

BATCHES = (32, 128)
STEPS = (64, 512)
TAGS = (9, 32, 64)


def make_inputs(batch, steps, num_tags, device):
    import torch
    generator = torch.Generator(device=device).manual_seed(0)
    emissions = torch.randn(batch, steps, num_tags, device=device, generator=generator)
    tags = torch.randint(0, num_tags, (batch, steps), device=device, generator=generator)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), device=device, generator=generator)
    lengths[0] = steps  # pytorch-crf needs no padding rule, but one full row keeps T honest
    mask = torch.arange(steps, device=device) < lengths.unsqueeze(1)
    return emissions.requires_grad_(), tags, mask


def modules(num_tags, device):
    import torchcrf

    import fusedloss.nn
    ours = fusedloss.nn.CRF(num_tags, batch_first=True).to(device)
    theirs = torchcrf.CRF(num_tags, batch_first=True).to(device)
    theirs.load_state_dict(ours.state_dict())
    return {"fusedloss": ours, "pytorch-crf": theirs}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: one tiny size through the Triton interpreter")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--tags", type=int, nargs="+", default=list(TAGS))
    args = parser.parse_args()

    import torch
    device = benchmark_device(parser, args.smoke)
    cuda = device.type == "cuda"
    if not cuda:  # numpy evaluating log(0) in the -inf padding lanes the kernels mask away
        warnings.filterwarnings("ignore", "divide by zero encountered", RuntimeWarning)
    import triton

    import fusedloss
    import fusedloss.functional as F
    fusedloss.set_backend("triton")
    sizes = list(itertools.product(args.batches, args.steps, args.tags)) if cuda else [(2, 4, 5)]
    device_name = device_label(device)
    print(f"{device_name} | torch {torch.__version__} | triton {triton.__version__}")

    rows = []
    header = f"{'what':7} {'B':>4} {'T':>4} {'K':>3} {'impl':18} {'ms':>9} {'q20':>9} {'q80':>9} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for batch, steps, num_tags in sizes:
        emissions, tags, mask = make_inputs(batch, steps, num_tags, device)
        crfs = modules(num_tags, device)
        ours, theirs = crfs["fusedloss"], crfs["pytorch-crf"]
        if not cuda:  # the smoke run also checks the kernels still agree with pytorch-crf
            torch.testing.assert_close(ours(emissions, tags, mask), theirs(emissions, tags, mask))
            assert ours.decode(emissions, mask) == theirs.decode(emissions, mask)

        def nll_step(crf):
            def step():
                crf.zero_grad(set_to_none=True)
                (-crf(emissions, tags, mask, reduction="sum")).backward()
            return step

        def decode_step(fn):
            def step():
                with torch.no_grad():
                    fn()
            return step

        timings = {
            ("nll", "fusedloss"): nll_step(ours),
            ("nll", "pytorch-crf"): nll_step(theirs),
            ("decode", "fusedloss"): decode_step(lambda: F.crf_decode(
                emissions, ours.transitions, ours.start_transitions, ours.end_transitions, mask)),
            ("decode", "fusedloss (lists)"): decode_step(lambda: ours.decode(emissions, mask)),
            ("decode", "pytorch-crf"): decode_step(lambda: theirs.decode(emissions, mask)),
        }
        results = {key: measure_ms(step, emissions, cuda) for key, step in timings.items()}
        for (what, impl), (ms, q20, q80) in results.items():
            theirs_ms = results[(what, "pytorch-crf")][0]
            row = dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                       what=what, batch=batch, steps=steps, tags=num_tags, impl=impl, ms=ms,
                       ms_q20=q20, ms_q80=q80, speedup_vs_pytorch_crf=theirs_ms / ms)
            rows.append(row)
            print(f"{what:7} {batch:>4} {steps:>4} {num_tags:>3} {impl:18} {ms:9.3f} {q20:9.3f} "
                  f"{q80:9.3f} {row['speedup_vs_pytorch_crf']:8.2f}x")
        del emissions, tags, mask, crfs

    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
