"""Calls of linear_cross_entropy: the projection's input, weight and bias with the cross
entropy's targets and options.
"""
import torch
from hypothesis import strategies as st

from ._common import REDUCTIONS, Call, class_counts, grad, indices, invalid, values, values_only
from .cross_entropy import class_weights, hard_targets, mean_denominator


@st.composite
def linear_cross_entropy_calls(draw, dtype):
    num_classes = draw(class_counts(small=64, large=(1025, 1030)))
    features = draw(st.integers(1, 16))
    unbatched = draw(st.integers(0, 4)) == 4
    n = draw(st.integers(0, 3 if num_classes > 1024 else 6))
    input_shape = (features,) if unbatched else (n, features)
    logits_shape = (num_classes,) if unbatched else (n, num_classes)
    x = draw(values(input_shape, dtype, scale=draw(st.sampled_from((1.0, 0.3, 5.0)))))
    w = draw(values((num_classes, features), dtype, scale=draw(st.sampled_from((0.3, 1.0, 3.0)))))
    kwargs = {}
    if draw(st.booleans()):
        kwargs["linear_bias"] = grad(draw(values((num_classes,), dtype)))
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
        target = draw(values(logits_shape, torch.float64, scale=3.0)).softmax(-1).to(dtype)
    else:
        ignore_index = draw(st.sampled_from((None, -100, 0)))
        target = draw(hard_targets(logits_shape[:-1], num_classes,
                                    -100 if ignore_index is None else ignore_index))
        if ignore_index is not None:
            kwargs["ignore_index"] = ignore_index
    call = Call("linear_cross_entropy", (grad(x), grad(w), target), kwargs,
                "soft labels" if soft else "")
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
    kind = draw(st.sampled_from(("features", "target out of range", "bad reduction")))
    kwargs = {}
    if kind == "features":
        w = draw(values((c, d + 1), torch.float32))
    elif kind == "target out of range":
        t[0] = c
    else:
        kwargs["reduction"] = "avg"
    return invalid(name, (x, w, t), kwargs, None, kind)
