"""Calls of nce_loss: caller-drawn negatives under uniform, random and peaked noise.
"""
import math

import torch
from hypothesis import strategies as st

from ._common import REDUCTIONS, Call, batch_sizes, grad, indices, invalid, on_other_device, uniform, values


@st.composite
def nce_loss_calls(draw, dtype):
    n = draw(batch_sizes())
    features = draw(st.integers(1, 8))
    num_classes = draw(st.integers(2, 20))
    noise = draw(st.integers(1, 6))
    x = draw(values((n, features), dtype))
    weight = draw(values((num_classes, features), dtype, scale=draw(st.sampled_from((0.5, 1.0, 5.0)))))
    bias = grad(draw(values((num_classes,), dtype))) if draw(st.booleans()) else None
    target = draw(indices((n,) if draw(st.booleans()) else (n, 1), num_classes))
    noise_samples = draw(indices((n, noise), num_classes))
    kind = draw(st.sampled_from(("uniform", "random", "peaked")))
    if kind == "uniform":
        log_q = torch.full((num_classes,), -math.log(num_classes), dtype=torch.float64)
    else:
        log_q = draw(values((num_classes,), torch.float64, scale=1.0 if kind == "random" else 8.0)).log_softmax(0)
    return Call("nce_loss", (grad(x), target, grad(weight), bias, noise_samples, log_q.to(dtype)),
                dict(reduction=draw(st.sampled_from(REDUCTIONS))))


@st.composite
def invalid_nce_loss_calls(draw, name):
    n, d, classes, k = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(1, 3))
    x = draw(values((n, d), torch.float32))
    weight = draw(values((classes, d), torch.float32))
    target = draw(indices((n,), classes))
    noise = draw(indices((n, k), classes))
    log_q = torch.full((classes,), -math.log(classes))
    kind = draw(st.sampled_from(("target out of range", "noise out of range", "noise shape",
                                 "noise_log_probs shape", "bad reduction", "noise on another device")))
    kwargs, expected = {}, ValueError
    if kind == "noise on another device":
        noise, expected = on_other_device(noise), RuntimeError
    elif kind == "target out of range":
        target[0], expected = classes, IndexError
    elif kind == "noise out of range":
        noise[0, 0], expected = -1, IndexError
    elif kind == "noise shape":
        noise = noise[:, 0]
    elif kind == "noise_log_probs shape":
        log_q = torch.full((classes + 1,), -math.log(classes))
    else:
        kwargs["reduction"] = "avg"
    return invalid(name, (x, target, weight, None, noise, log_q), kwargs, expected, kind)
