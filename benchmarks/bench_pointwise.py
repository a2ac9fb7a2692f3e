"""Pointwise losses, forward + backward: fusedloss against torch eager and torch.compile.

Per loss, dtype and size all run on the same input and target (reduction 'mean', the gradient
w.r.t. the input). The bound is one read of input and target and one write of the input
gradient; "% of bound" is that traffic's time at the run's bandwidth bound (a measured
device-to-device copy) over the measured time. A loss torch lacks (torchvision's sigmoid focal
loss) is measured against the reference's torch composition.

    python benchmarks/bench_pointwise.py [--quick] [--out DIR]
"""
from common import row, script_main, time_and_memory

AXIS = "elements"
LOSSES = ("binary_cross_entropy_with_logits", "mse_loss", "smooth_l1_loss",
          "sigmoid_focal_loss")  # one of each kind of math
DTYPES = ("bf16", "fp32")
SIZES = (2**24, 2**26, 2**28)
QUICK = {"losses": LOSSES[:2], "dtypes": ("fp32",), "sizes": (1000, 4099)}


def make_inputs(info, numel, dtype, device):
    import torch
    generator = torch.Generator(device=device).manual_seed(0)
    if info.name == "binary_cross_entropy":  # probabilities, away from the clamped logs
        x = torch.rand(numel, device=device, dtype=torch.float32, generator=generator) * 0.98 + 0.01
        x = x.to(dtype)
    else:
        x = torch.randn(numel, device=device, dtype=dtype, generator=generator)
    draw = torch.rand if info.family == "binary" else torch.randn
    return x.requires_grad_(), draw(numel, device=device, dtype=dtype, generator=generator)


def implementations(info, quick):
    """fusedloss, torch's eager twin (or the reference's torch composition where torch has none)
    and, outside --quick runs, torch.compile of it; all with reduction 'mean'."""
    import functools

    import torch
    import torch.nn.functional as TF

    from fusedloss import reference
    eager = getattr(TF, info.twin) if info.twin else getattr(reference, info.name)
    impls = {"fusedloss": functools.partial(info.function, reduction="mean"),
             "torch": functools.partial(eager, reduction="mean")}
    if not quick:
        impls["torch.compile"] = torch.compile(impls["torch"], dynamic=False)
    return impls


def run(device, quick, peaks, notes):
    import torch

    from fusedloss import catalog
    sizes = QUICK if quick else {"losses": LOSSES, "dtypes": DTYPES, "sizes": SIZES}
    if quick:
        notes.append("torch.compile left out of --quick runs (its compile time)")
    for loss in sizes["losses"]:
        info = catalog.get(loss)
        impls = implementations(info, quick)
        for dtype_name in sizes["dtypes"]:
            dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
            for numel in sizes["sizes"]:
                x, y = make_inputs(info, numel, dtype, device)
                for name, fn in impls.items():
                    def step():
                        fn(x, y).backward()

                    measured = time_and_memory(step, [x], device)
                    moved = 3 * numel * x.element_size()
                    yield row("pointwise", loss, dtype_name, AXIS, numel, name, measured,
                                    peaks.pct_of_bytes(moved, measured["ms"]))
                del x, y


if __name__ == "__main__":
    script_main("pointwise")
