"""Linear-chain CRF: fusedloss against pytorch-crf (torchcrf, when importable), on the same
tensors (batch B = 64, steps T, tags K; each sequence's length drawn between T/2 and T, a prefix
mask), in float32 and bfloat16 (the emissions and the CRF's parameters in that dtype, for both
implementations). Two cases per size:
  nll     forward + backward of the summed log-likelihood of a CRF module (fusedloss.nn.CRF and
          torchcrf.CRF with the same parameters, batch_first), gradients w.r.t. the emissions
          and the three transition parameters.
  decode  Viterbi: fusedloss.functional.crf_decode (a (B, T) tensor, -1 padded) against
          torchcrf.CRF.decode (lists; its backtrack runs on the host, part of its cost), and
          fusedloss.nn.CRF.decode (the same lists, like for like).
Both are latency-bound recursions over T steps: there is no bandwidth bound to report.

    python benchmarks/bench_crf.py [--quick] [--out DIR]
"""
from common import row, script_main, time_and_memory

AXIS = "T"
BATCH = 64
STEPS = (256, 512)
TAGS = (9, 64, 256)
DTYPES = ("fp32", "bf16")
QUICK = {"batch": 2, "steps": (4, 8), "tags": (5,), "dtypes": ("fp32",)}


def make_inputs(batch, steps, num_tags, dtype, device):
    import torch
    generator = torch.Generator(device=device).manual_seed(0)
    emissions = torch.randn(batch, steps, num_tags, device=device, generator=generator).to(dtype)
    tags = torch.randint(0, num_tags, (batch, steps), device=device, generator=generator)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), device=device, generator=generator)
    lengths[0] = steps  # one full row keeps T honest
    mask = torch.arange(steps, device=device) < lengths.unsqueeze(1)
    return emissions.requires_grad_(), tags, mask


def run(device, quick, peaks, notes):
    import itertools

    import torch

    import fusedloss.functional as F
    import fusedloss.nn
    try:
        import torchcrf
    except ImportError:
        torchcrf = None
        notes.append("pytorch-crf left out: not installed")
    sizes = QUICK if quick else {"batch": BATCH, "steps": STEPS, "tags": TAGS, "dtypes": DTYPES}
    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for dtype_name, steps, num_tags in itertools.product(sizes["dtypes"], sizes["steps"],
                                                         sizes["tags"]):
        dtype = torch_dtypes[dtype_name]
        emissions, tags, mask = make_inputs(sizes["batch"], steps, num_tags, dtype, device)
        ours = fusedloss.nn.CRF(num_tags, batch_first=True).to(device=device, dtype=dtype)
        crfs = {"fusedloss": ours}
        if torchcrf is not None:
            crfs["pytorch-crf"] = torchcrf.CRF(num_tags, batch_first=True).to(device=device,
                                                                               dtype=dtype)
            crfs["pytorch-crf"].load_state_dict(ours.state_dict())

        def nll(crf):
            def step():
                crf.zero_grad(set_to_none=True)
                (-crf(emissions, tags, mask, reduction="sum")).backward()
            return step

        def no_grad(fn):
            def step():
                with torch.no_grad():
                    fn()
            return step

        steps_by_case = {("nll", name): nll(crf) for name, crf in crfs.items()}
        steps_by_case[("decode", "fusedloss")] = no_grad(lambda: F.crf_decode(
            emissions, ours.transitions, ours.start_transitions, ours.end_transitions, mask))
        steps_by_case[("decode", "fusedloss (lists)")] = no_grad(lambda: ours.decode(emissions, mask))
        if "pytorch-crf" in crfs:
            steps_by_case[("decode", "pytorch-crf")] = no_grad(
                lambda: crfs["pytorch-crf"].decode(emissions, mask))
        for (what, impl), step in steps_by_case.items():
            measured = time_and_memory(step, [emissions], device)
            yield row("crf", f"{what} B={sizes['batch']} K={num_tags}", dtype_name, AXIS, steps,
                      impl, measured)
        del emissions, tags, mask, crfs


if __name__ == "__main__":
    script_main("crf")
