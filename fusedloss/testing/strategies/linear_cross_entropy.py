"""Calls of linear_cross_entropy: the projection's input, weight and bias with the cross
entropy's targets and options, and torch 2.13's K-dimensional classifiers (linear_weight
(C, d1, ..., dk, H), target (N, d1, ..., dk) or probabilities (N, C, d1, ..., dk)).
"""
import torch
from hypothesis import strategies as st

from ._common import (REDUCTIONS, Call, class_counts, grad, indices, invalid, on_other_device,
                      values, values_only)
from .cross_entropy import class_weights, hard_targets, mean_denominator


@st.composite
def linear_cross_entropy_calls(draw, dtype):
    num_classes = draw(class_counts(small=64, large=(1025, 1030)))
    features = draw(st.integers(1, 16))
    unbatched = draw(st.integers(0, 4)) == 4
    n = draw(st.integers(0, 3 if num_classes > 1024 else 6))
    # a K-dimensional classifier: one (C, H) classifier per position of out_features (batched)
    out_features = ()
    if not unbatched and num_classes <= 64 and draw(st.integers(0, 5)) == 5:
        out_features = tuple(draw(st.lists(st.integers(1, 2), min_size=1, max_size=2)))
    input_shape = (features,) if unbatched else (n, features)
    logits_shape = (num_classes,) if unbatched else (n, num_classes, *out_features)
    x = draw(values(input_shape, dtype, scale=draw(st.sampled_from((1.0, 0.3, 5.0)))))
    w = draw(values((num_classes, *out_features, features), dtype,
                    scale=draw(st.sampled_from((0.3, 1.0, 3.0)))))
    kwargs = {}
    if draw(st.booleans()):
        kwargs["linear_bias"] = grad(draw(values((num_classes, *out_features), dtype)))
    weight = draw(class_weights(num_classes, dtype))
    if weight is not None:
        kwargs["weight"] = weight
    kwargs["reduction"] = draw(st.sampled_from(REDUCTIONS))
    label_smoothing = draw(st.sampled_from((0.0, 0.0, 0.1, 1.0)))
    if label_smoothing:
        kwargs["label_smoothing"] = label_smoothing
    for key, choices in (("z_loss", (1e-4, 0.1)), ("softcap", (30.0, 2.0))):
        if draw(st.integers(0, 2)) == 2:
            kwargs[key] = draw(st.sampled_from(choices))
    if draw(st.integers(0, 4)) == 4:
        kwargs["return_lse"] = True
    soft = draw(st.integers(0, 4)) == 4
    if soft:
        class_dim = 0 if unbatched else 1
        target = draw(values(logits_shape, torch.float64, scale=3.0)).softmax(class_dim).to(dtype)
    else:
        ignore_index = draw(st.sampled_from((None, -100, 0)))
        target_shape = logits_shape[:-1] if unbatched else (n, *out_features)
        target = draw(hard_targets(target_shape, num_classes,
                                    -100 if ignore_index is None else ignore_index))
        if ignore_index is not None:
            kwargs["ignore_index"] = ignore_index
    notes = ["soft labels"] * soft + [f"K-dimensional classifier {out_features}"] * bool(out_features)
    call = Call("linear_cross_entropy", (grad(x), grad(w), target), kwargs, "; ".join(notes))
    ignore = kwargs.get("ignore_index", -100)
    if (not soft and kwargs["reduction"] == "mean"
            and mean_denominator(target, weight, ignore, num_classes) == 0):
        values_only(call, "mean over zero total weight (all ignored)")
    return call


@st.composite
def invalid_linear_cross_entropy_calls(draw, name):
    n, d, c = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(2, 9))
    x = draw(values((n, d), torch.float32))
    w = draw(values((c, d), torch.float32))
    t = draw(indices((n,), c))
    kind = draw(st.sampled_from(("features", "target out of range", "bad reduction",
                                 "probabilities with ignore_index", "linear_weight dtype",
                                 "class weight dtype", "target on another device",
                                 "unbatched K-dimensional", "K-dimensional bias shape",
                                 "3-d input")))
    kwargs = {}
    if kind == "3-d input":  # torch 2.13 takes (N, H) or (H,) (2.11's composition would broadcast)
        return invalid(name, (x.unsqueeze(0), w, t.unsqueeze(0)), kwargs, RuntimeError, kind)
    if kind == "probabilities with ignore_index":  # torch 2.13's RuntimeError (2.11 has no twin)
        probabilities = draw(values((n, c), torch.float64)).softmax(1).float()
        kwargs["ignore_index"] = draw(st.sampled_from((-100, 0)))
        return invalid(name, (x, w, probabilities), kwargs, RuntimeError, kind)
    if kind in ("unbatched K-dimensional", "K-dimensional bias shape"):  # torch 2.13's checks
        w = draw(values((c, 2, d), torch.float32))
        if kind == "unbatched K-dimensional":
            return invalid(name, (x[0], w, t[0]), kwargs, RuntimeError, kind)
        kwargs["linear_bias"] = torch.zeros(c)
        return invalid(name, (x, w, t.unsqueeze(1).expand(n, 2)), kwargs, RuntimeError, kind)
    if kind == "linear_weight dtype":
        w = w.double()
    elif kind == "class weight dtype":
        kwargs["weight"] = torch.ones(c, dtype=torch.float64)
    elif kind == "target on another device":
        t = on_other_device(t)
    elif kind == "features":
        w = draw(values((c, d + 1), torch.float32))
    elif kind == "target out of range":
        t[0] = c
    else:
        kwargs["reduction"] = "avg"
    return invalid(name, (x, w, t), kwargs, None, kind)
