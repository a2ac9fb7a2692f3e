"""Calls of dice_loss: probabilities (N, ..., C) and one-hot class labels (N, ..., 1)."""
import torch
from hypothesis import strategies as st

from ._common import REDUCTIONS, Call, batch_sizes, class_counts, grad, indices, invalid, on_other_device, values


@st.composite
def dice_loss_calls(draw, dtype):
    num_classes = draw(class_counts(small=12, large=(1025, 1030)))
    n = draw(batch_sizes(4))
    middle = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if num_classes <= 1024 else ()
    shape = (n,) + middle + (num_classes,)
    probs = draw(values(shape, torch.float64, scale=draw(st.sampled_from((1.0, 5.0, 100.0)))))
    probs = probs.softmax(-1).to(dtype)
    label = draw(indices(shape[:-1] + (1,), num_classes))
    epsilon = draw(st.sampled_from((1e-5, 1.0, 0.0)))
    return Call("dice_loss", (grad(probs), label),
                dict(epsilon=epsilon, reduction=draw(st.sampled_from(REDUCTIONS))))


@st.composite
def invalid_dice_loss_calls(draw, name):
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    probs = draw(values((n, c), torch.float64)).softmax(-1).float()
    label = draw(indices((n, 1), c))
    kind = draw(st.sampled_from(("label shape", "label out of range", "bad reduction",
                                 "label on another device")))
    if kind == "label on another device":
        return invalid(name, (probs, on_other_device(label)), {}, RuntimeError, kind)
    if kind == "label shape":
        return invalid(name, (probs, label.reshape(-1)), {}, ValueError, kind)
    if kind == "label out of range":
        label[0, 0] = c
        return invalid(name, (probs, label), {}, IndexError, kind)
    return invalid(name, (probs, label), {"reduction": "avg"}, ValueError, kind)
