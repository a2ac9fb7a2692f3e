"""Hierarchical sigmoid and NCE, forward + backward: fusedloss against the reference's torch ops
(eager) and torch.compile of them, on the same tensors: input (N, D), weight and bias requiring
grad (gradients of all three), reduction 'mean'. hsigmoid uses the default tree over C classes
(paths of ~log2 C nodes, the root shared by every sample); NCE draws k negatives per sample,
uniformly or from the log-uniform (Zipf) sampler, whose frequent classes make long segments for
the weight-gradient scatter. Beside them, what they stand in for: the full softmax cross entropy
over all C classes, x @ W^T + b into torch's cross_entropy (the (N, C) logits materialised) and
fusedloss's linear_cross_entropy (chunked, no logits held), W (C, D) requiring grad as theirs do.
Gathers of scattered rows: no simple bound to report.

    python benchmarks/bench_hsigmoid_nce.py [--quick] [--out DIR]
"""
import math

from common import row, script_main, time_and_memory

AXIS = "classes"
LOSSES = ("hsigmoid_loss", "nce_loss")
SAMPLERS = ("uniform", "log_uniform")
FULL = {"batch": 8192, "features": 512, "classes": (1000, 10000, 100000), "noise": 64,
        "samplers": SAMPLERS}
QUICK = {"batch": 4, "features": 16, "classes": (8, 20), "noise": 2, "samplers": ("uniform",)}


def make_inputs(loss, batch, features, num_classes, num_noise, sampler, device):
    """(args, leaves): the loss's positional arguments and the tensors that require grad."""
    import torch
    generator = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape, scale=1.0):
        return (torch.randn(shape, device=device, generator=generator) * scale).requires_grad_()

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
    return (x, target, weight, bias, noise, log_q), [x, weight, bias]


def softmax_steps(batch, features, num_classes, device):
    """{impl: step} of the full softmax cross entropy over every class, forward + backward."""
    import torch

    import fusedloss.functional as F
    generator = torch.Generator(device=device).manual_seed(1)

    def leaf(*shape, scale=1.0):
        return (torch.randn(shape, device=device, generator=generator) * scale).requires_grad_()

    x, weight, bias = leaf(batch, features), leaf(num_classes, features, scale=features ** -0.5), leaf(num_classes)
    target = torch.randint(0, num_classes, (batch,), device=device, generator=generator)
    leaves = [x, weight, bias]

    def torch_step():
        logits = torch.addmm(bias, x, weight.t())
        torch.autograd.grad(torch.nn.functional.cross_entropy(logits, target), leaves)

    def fused_step():
        torch.autograd.grad(F.linear_cross_entropy(x, weight, target, linear_bias=bias), leaves)

    return {"softmax CE, torch": torch_step, "softmax CE, fusedloss linear_cross_entropy": fused_step}


def run(device, quick, peaks, notes):
    import torch

    import fusedloss.functional as F
    from fusedloss import reference
    sizes = QUICK if quick else FULL
    if quick:
        notes.append("torch.compile left out of --quick runs (its compile time)")
    for loss in LOSSES:
        eager = getattr(reference, loss)
        impls = {"fusedloss": getattr(F, loss), "torch": eager}
        if not quick:
            impls["torch.compile"] = torch.compile(eager, dynamic=False)
        for sampler in sizes["samplers"] if loss == "nce_loss" else ("",):
            case = (f"{loss} N={sizes['batch']} D={sizes['features']}"
                    + (f" k={sizes['noise']} {sampler}" if sampler else ""))
            for num_classes in sizes["classes"]:
                args, leaves = make_inputs(loss, sizes["batch"], sizes["features"], num_classes,
                                           sizes["noise"], sampler, device)
                steps = {name: (lambda fn=fn: torch.autograd.grad(fn(*args), leaves))
                         for name, fn in impls.items()}
                steps.update(softmax_steps(sizes["batch"], sizes["features"], num_classes, device))
                for name, step in steps.items():
                    yield row("hsigmoid_nce", case, "fp32", AXIS, num_classes, name,
                              time_and_memory(step, [], device))
                del args, leaves, steps


if __name__ == "__main__":
    script_main("hsigmoid_nce")
