"""Linear + cross entropy, forward + backward (gradients of the hidden states and the weight):
fusedloss against torch eager (the (N, V) logits materialised), torch's chunked
F.linear_cross_entropy (torch >= 2.13, `options=torch.nn.LinearCrossEntropyOptions()`),
cut-cross-entropy and Liger-Kernel's fused linear cross entropy (each when importable and on
CUDA; otherwise the notes say why it is left out), all on the same inputs: N = 8192 tokens (one
in 50 ignored) of Gemma 2 2B's hidden size H = 2304, bf16, at the vocabularies of Llama 2,
Llama 3 and Gemma (V = 256000 is where fusedloss holds its peak to 256 MiB beyond the inputs
and the gradients: benchmarks/lce_memory.py).

The work is three (N, H) x (H, V) matmuls (logits, grad of the hidden states, grad of the
weight): "% of bound" is those 6 N H V flops' time at the device's dense bf16 peak over the
measured time. Peak memory counts what a call allocates beyond its inputs, the returned
gradients included.

    python benchmarks/bench_linear_cross_entropy.py [--quick] [--out DIR]
"""
from common import row, script_main, time_and_memory

AXIS = "V"
TOKENS = (8192,)
HIDDEN = 2304
VOCABULARIES = (32000, 128256, 256000)
QUICK = {"tokens": (4,), "hidden": 16, "vocabularies": (300, 1100)}


def implementations(device, notes):
    """name -> loss(hidden, weight, target); each peer left out gets a line in `notes`."""
    import torch
    import torch.nn.functional as TF

    import fusedloss.functional as F
    impls = {
        "fusedloss": F.linear_cross_entropy,
        "torch eager": lambda x, w, t: TF.cross_entropy(TF.linear(x, w), t),
    }
    if hasattr(torch.nn, "LinearCrossEntropyOptions"):
        options = torch.nn.LinearCrossEntropyOptions()
        impls["torch chunked"] = lambda x, w, t: TF.linear_cross_entropy(x, w, t, options=options)
    else:
        notes.append(f"torch chunked left out: torch {torch.__version__} has no "
                     "LinearCrossEntropyOptions")
    peers = (("cut-cross-entropy", "cut_cross_entropy", "linear_cross_entropy"),
             ("liger", "liger_kernel.transformers.functional", "liger_fused_linear_cross_entropy"))
    for name, module, function in peers:
        try:
            fn = getattr(__import__(module, fromlist=[function]), function)
        except ImportError:
            notes.append(f"{name} left out: not installed")
            continue
        if device.type == "cuda":
            impls[name] = fn
        else:
            notes.append(f"{name} left out: it needs CUDA")
    return impls


def run(device, quick, peaks, notes):
    import torch
    tokens, hidden, vocabularies = ((QUICK["tokens"], QUICK["hidden"], QUICK["vocabularies"])
                                    if quick else (TOKENS, HIDDEN, VOCABULARIES))
    impls = implementations(device, notes)
    for num_tokens in tokens:
        for vocabulary in vocabularies:
            generator = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(num_tokens, hidden, device=device, dtype=torch.bfloat16,
                            generator=generator)
            w = torch.randn(vocabulary, hidden, device=device, dtype=torch.bfloat16,
                            generator=generator)
            w /= hidden ** 0.5  # logits of a few units, as after a trained model's final norm
            target = torch.randint(0, vocabulary, (num_tokens,), device=device, generator=generator)
            target[::50] = -100
            x.requires_grad_()
            w.requires_grad_()
            for name, fn in impls.items():
                def step():
                    # autograd.grad, not backward: no .grad accumulation kernel is timed
                    return torch.autograd.grad(fn(x, w, target), (x, w))

                measured = time_and_memory(step, [], device)
                flops = 6 * num_tokens * hidden * vocabulary
                yield row("linear_cross_entropy", f"N={num_tokens} H={hidden}", "bf16", AXIS,
                                vocabulary, name, measured, peaks.pct_of_flops(flops, measured["ms"]))
            del x, w, target


if __name__ == "__main__":
    script_main("linear_cross_entropy")
