"""Calls of hsigmoid_loss: the default tree or custom paths padded with -1.
"""
import torch
from hypothesis import strategies as st

from ._common import REDUCTIONS, Call, batch_sizes, grad, indices, invalid, on_other_device, values


@st.composite
def hsigmoid_loss_calls(draw, dtype):
    n = draw(batch_sizes())
    features = draw(st.integers(1, 8))
    num_classes = draw(st.integers(2, 12)) if draw(st.integers(0, 9)) < 9 else draw(st.integers(60, 70))
    x = draw(values((n, features), dtype))
    label = draw(indices((n,) if draw(st.booleans()) else (n, 1), num_classes))
    kwargs = {}
    custom = draw(st.integers(0, 2)) == 2
    nodes = draw(st.integers(1, 8)) if custom else num_classes - 1
    weight = draw(values((nodes, features), dtype, scale=draw(st.sampled_from((0.5, 1.0, 5.0)))))
    bias_shape = draw(st.sampled_from((None, (nodes,), (nodes, 1))))
    bias = None if bias_shape is None else grad(draw(values(bias_shape, dtype)))
    if custom:
        depth = draw(st.integers(1, 4))
        table = draw(indices((n, depth), nodes))
        code = draw(indices((n, depth), 2))
        for row in range(n):  # each path is a prefix of its row, padded with -1
            used = draw(st.integers(1, depth))
            table[row, used:] = -1
            code[row, used:] = -1
        kwargs.update(path_table=table, path_code=code)
    kwargs["reduction"] = draw(st.sampled_from(REDUCTIONS))
    return Call("hsigmoid_loss", (grad(x), label, num_classes, grad(weight)), dict(bias=bias, **kwargs),
                "custom tree" if custom else "")


@st.composite
def invalid_hsigmoid_loss_calls(draw, name):
    n, d, classes = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(2, 6))
    x = draw(values((n, d), torch.float32))
    label = draw(indices((n,), classes))
    weight = draw(values((classes - 1, d), torch.float32))
    kind = draw(st.sampled_from(("label out of range", "one class", "weight rows", "features",
                                 "half a custom tree", "bad reduction", "weight on another device")))
    kwargs = {}
    if kind == "weight on another device":
        return invalid(name, (x, label, classes, on_other_device(weight)), kwargs, RuntimeError, kind)
    if kind == "label out of range":
        label[0] = classes
    elif kind == "one class":
        classes = 1
    elif kind == "weight rows":
        weight = draw(values((classes, d), torch.float32))
    elif kind == "features":
        weight = draw(values((classes - 1, d + 1), torch.float32))
    elif kind == "half a custom tree":
        kwargs["path_table"] = torch.zeros(n, 2, dtype=torch.int64)
    else:
        kwargs["reduction"] = "avg"
    return invalid(name, (x, label, classes, weight), kwargs, ValueError, kind)
