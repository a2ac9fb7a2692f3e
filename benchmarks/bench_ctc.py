"""CTC loss, forward + backward: fusedloss against torch's native CTC (and cuDNN's where torch
would take it), on the same inputs. Two input kinds, each with its own peer:
  log_probs  fusedloss ctc_loss(log_probs)             vs torch ctc_loss(log_probs), cuDNN off,
                                                          and with cuDNN allowed when eligible
  logits     fusedloss ctc_loss_with_logits(logits)    vs torch ctc_loss(log_softmax(logits))
Speech-like sizes: T = 1000 frames of N = 32 utterances, a character (C = 32) or BPE (C = 5000)
vocabulary, targets of S = 100 or 400 labels at most (lengths drawn from half that up), every
input at its full length T; fp32 and bf16. torch's CTC has no bf16 kernel: its bf16 rows run
it on the bf16 values cast to fp32 (the cast timed with it). cuDNN's CTC is tried only where
torch can use it: blank 0, fp32, int32 concatenated targets on the CPU, all input lengths T,
labels and target lengths at most 256. A latency-bound recursion over T: there is no bandwidth
bound to report.

    python benchmarks/bench_ctc.py [--quick] [--out DIR]
"""
from common import row, script_main, time_and_memory

AXIS = "S"
FRAMES = 1000
LABELS = (100, 400)
CLASSES = (32, 5000)
BATCH = 32
DTYPES = ("fp32", "bf16")
QUICK = {"frames": 8, "labels": (1, 2), "classes": (5,), "batch": 2, "dtypes": ("fp32",)}


def make_inputs(num_frames, batch, num_classes, max_target, device):
    import torch
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(num_frames, batch, num_classes, generator=generator).to(device)
    target_lengths = torch.randint(max(max_target // 2, 1), max_target + 1, (batch,),
                                   generator=generator)
    targets = torch.randint(1, num_classes, (batch, max_target), generator=generator)
    input_lengths = torch.full((batch,), num_frames, dtype=torch.int64)
    return logits, targets, input_lengths, target_lengths


def implementations(cudnn_eligible, wide):
    """name -> (input kind, loss(x, padded, flat, input_lengths, target_lengths)); `flat` is the
    concatenated int32 CPU targets cuDNN wants; `wide` casts torch's input to fp32 first."""
    import torch
    import torch.nn.functional as TF

    import fusedloss.functional as F

    def on(x, *tensors):
        return [t.to(x.device) for t in tensors]

    def torch_native(x, targets, flat, il, tl):
        with torch.backends.cudnn.flags(enabled=False):
            return TF.ctc_loss(x.float() if wide else x, *on(x, targets, il, tl))

    def torch_cudnn(x, targets, flat, il, tl):
        with torch.backends.cudnn.flags(enabled=True):
            return TF.ctc_loss(x, flat, il.int(), tl.int())

    peer = "torch (fp32 input)" if wide else "torch"
    impls = {"fusedloss": ("log_probs", lambda x, targets, flat, il, tl:
                           F.ctc_loss(x, *on(x, targets, il, tl))),
             peer: ("log_probs", torch_native)}
    if cudnn_eligible:
        impls["torch cudnn"] = ("log_probs", torch_cudnn)
    impls["fusedloss with_logits"] = ("logits", lambda x, targets, flat, il, tl:
                                      F.ctc_loss_with_logits(x, *on(x, targets, il, tl)))
    impls[f"{peer} log_softmax+ctc"] = ("logits", lambda x, targets, flat, il, tl:
                                        torch_native(x.log_softmax(-1), targets, flat, il, tl))
    return impls


def run(device, quick, peaks, notes):
    import torch
    frames, labels, classes, batch, dtypes = (
        (QUICK["frames"], QUICK["labels"], QUICK["classes"], QUICK["batch"], QUICK["dtypes"])
        if quick else (FRAMES, LABELS, CLASSES, BATCH, DTYPES))
    if device.type != "cuda":
        notes.append("torch cudnn left out: it needs CUDA")
    for dtype_name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for num_classes in classes:
            for max_target in labels:
                logits, targets, input_lengths, target_lengths = make_inputs(
                    frames, batch, num_classes, max_target, device)
                log_probs = logits.log_softmax(-1).to(dtype)
                logits = logits.to(dtype)
                flat = torch.cat([r[:n] for r, n in zip(targets, target_lengths.tolist())]).int()
                eligible = (device.type == "cuda" and dtype == torch.float32
                            and num_classes <= 256 and max_target <= 256)
                impls = implementations(eligible, wide=dtype != torch.float32)
                for name, (kind, fn) in impls.items():
                    x = (log_probs if kind == "log_probs" else logits).detach().requires_grad_()

                    def step():
                        fn(x, targets, flat, input_lengths, target_lengths).backward()

                    measured = time_and_memory(step, [x], device)
                    yield row("ctc", f"{kind} T={frames} N={batch} C={num_classes}", dtype_name,
                              AXIS, max_target, name, measured)
                del logits, log_probs


if __name__ == "__main__":
    script_main("ctc")
