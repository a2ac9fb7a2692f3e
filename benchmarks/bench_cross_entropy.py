"""Cross entropy, forward and forward + backward: fusedloss (and its in-place backward) against
torch eager, torch.compile, Liger-Kernel and flash-attn's Triton cross entropy (each when
importable and on CUDA; otherwise the peer is left out and the notes say so), all on the same
logits and targets: N = 8192 tokens (one in 50 ignored), vocabularies of Llama 2, Llama 3 and
Gemma.

The bound is one read of the logits (forward) plus one write of their gradient (forward +
backward): "% of bound" is that traffic's time at the run's bandwidth bound (a measured
device-to-device copy) over the measured time, the same yardstick for every implementation.
Liger, flash-attn (both with their in-place backward) and `fusedloss inplace` keep the gradient
in the logits' storage; the others allocate it. flash-attn's loss is its CrossEntropyLoss
module, which takes the mean of its per-token losses with two torch ops, as it does in training.
`fusedloss rows looped` is fusedloss with no row held whole in one block: at V = 32000, which
fusedloss holds in registers and reads once, it times the two-read sweep (the second read meant
for L2) that longer rows take, so one run shows which of the two the device favours.

    python benchmarks/bench_cross_entropy.py [--quick] [--out DIR]
"""
from common import row, script_main, time_and_memory

AXIS = "V"
TOKENS = (8192,)
VOCABULARIES = (32000, 128256, 256000)
DTYPES = ("bf16", "fp32")
MODES = ("fwd", "fwd+bwd")
QUICK = {"tokens": (2,), "vocabularies": (500, 2000), "dtypes": ("fp32",), "modes": ("fwd+bwd",)}


def implementations(device, quick, notes):
    """name -> loss(logits, target); each peer left out gets a line in `notes`."""
    import torch
    import torch.nn.functional as TF

    import fusedloss.functional as F
    impls = {
        "fusedloss": F.cross_entropy,
        "fusedloss inplace": lambda x, t: F.cross_entropy(x, t, inplace_backward=True),
        LOOPED: _rows_looped(F.cross_entropy),
        "torch": TF.cross_entropy,
    }
    if quick:
        notes.append("torch.compile left out of --quick runs (its compile time)")
    else:
        impls["torch.compile"] = torch.compile(TF.cross_entropy, dynamic=False)
    try:
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
    except ImportError:
        notes.append("Liger-Kernel left out: not installed")
    else:
        if device.type == "cuda":
            impls["liger"] = LigerCrossEntropyLoss()
        else:
            notes.append("Liger-Kernel left out: it needs CUDA")
    try:  # the package imports its compiled attention extension first
        from flash_attn.losses.cross_entropy import CrossEntropyLoss as FlashCrossEntropyLoss
    except ImportError as error:
        notes.append(f"flash-attn left out: not importable ({error})")
    else:
        if device.type == "cuda":
            impls["flash-attn"] = FlashCrossEntropyLoss(inplace_backward=True)
        else:
            notes.append("flash-attn left out: it needs CUDA")
    return impls


LOOPED = "fusedloss rows looped"


def _kernels():
    import importlib
    return importlib.import_module("fusedloss.triton_kernels.cross_entropy")


def _rows_looped(loss):
    """The loss with rows held whole only up to the row block (the forward runs the row kernel;
    the backward only scales what it wrote)."""
    kernels = _kernels()

    def looped(logits, target):
        held, kernels.MAX_HELD_ROW = kernels.MAX_HELD_ROW, kernels.MAX_ROW_BLOCK
        try:
            return loss(logits, target)
        finally:
            kernels.MAX_HELD_ROW = held
    return looped


def fits(num_tokens, vocabulary, element, device):
    """The logits, the copy each implementation gets and its gradient must fit (peers may still
    run out: OOM rows)."""
    import torch
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info()
    return 3 * num_tokens * vocabulary * element < 0.9 * free


def run(device, quick, peaks, notes):
    import torch
    sizes = QUICK if quick else {"tokens": TOKENS, "vocabularies": VOCABULARIES,
                                 "dtypes": DTYPES, "modes": MODES}
    impls = implementations(device, quick, notes)
    kernels = _kernels()
    for dtype_name in sizes["dtypes"]:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
        for num_tokens in sizes["tokens"]:
            for vocabulary in sizes["vocabularies"]:
                if not fits(num_tokens, vocabulary, torch.finfo(dtype).bits // 8, device):
                    notes.append(f"{dtype_name} N={num_tokens} V={vocabulary} left out: exceeds memory")
                    continue
                generator = torch.Generator(device=device).manual_seed(0)
                logits = torch.randn(num_tokens, vocabulary, device=device, dtype=dtype,
                                     generator=generator)
                target = torch.randint(0, vocabulary, (num_tokens,), device=device,
                                       generator=generator)
                target[::50] = -100
                for mode in sizes["modes"]:
                    backward = mode == "fwd+bwd"
                    if "torch.compile" in impls:  # a fresh compile per size: no recompile limit
                        torch._dynamo.reset()
                    for name, fn in impls.items():
                        if name == LOOPED and not (kernels.MAX_ROW_BLOCK < vocabulary
                                                   <= kernels.MAX_HELD_ROW):
                            continue  # no row held here: the same call as fusedloss
                        # a fresh copy each: the in-place peers overwrite their logits
                        x = logits.clone().requires_grad_(backward)

                        def step():
                            loss = fn(x, target)
                            if backward:
                                loss.backward()

                        measured = time_and_memory(step, [x], device)
                        moved = logits.numel() * logits.element_size() * (2 if backward else 1)
                        yield row("cross_entropy", f"N={num_tokens} {mode}", dtype_name,
                                        AXIS, vocabulary, name, measured,
                                        peaks.pct_of_bytes(moved, measured["ms"]))
                        del x


if __name__ == "__main__":
    script_main("cross_entropy")
