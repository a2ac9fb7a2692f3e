"""Calls of the binary family: BCE with logits, BCE on probabilities, sigmoid focal loss.

Probabilities at exactly 0 and 1 (values only: the log is clamped there), broadcast weight and
pos_weight, targets that are hard 0/1 or soft.
"""
import torch
from hypothesis import strategies as st

from ._common import (LOGIT_SPECIALS, PROB_FLOOR, REDUCTIONS, Call, as_integers, elementwise_shapes,
                      grad, indices, invalid, on_other_device, reduction_kwargs, strided, uniform,
                      values, values_only)


@st.composite
def _broadcastable(draw, shape, dtype, low=0.0, high=2.0):
    """A tensor that broadcasts against `shape`: a trailing-dims suffix with some sizes 1."""
    keep = draw(st.integers(0, len(shape)))
    suffix = [s if draw(st.booleans()) else 1 for s in shape[len(shape) - keep:]]
    return draw(uniform(tuple(suffix), dtype, low, high))


@st.composite
def binary_targets(draw, shape, dtype):
    if draw(st.booleans()):
        return draw(indices(shape, 2)).to(dtype)
    return draw(uniform(shape, dtype, specials=(0.0, 1.0)))


@st.composite
def binary_cross_entropy_with_logits_calls(draw, dtype):
    shape = draw(elementwise_shapes())
    x = draw(values(shape, dtype, specials=LOGIT_SPECIALS))
    target = draw(binary_targets(shape, dtype))
    kwargs = {}
    if draw(st.booleans()):
        kwargs["weight"] = draw(_broadcastable(shape, dtype))
    if draw(st.booleans()):
        kwargs["pos_weight"] = draw(_broadcastable(shape, dtype, 0.0, 4.0))
    kwargs.update(draw(reduction_kwargs(legacy=True)))
    target_grad = draw(st.integers(0, 4)) == 4
    return Call("binary_cross_entropy_with_logits",
                (grad(draw(strided(x))), grad(target, target_grad)), kwargs)


@st.composite
def binary_cross_entropy_calls(draw, dtype):
    shape = draw(elementwise_shapes())
    extreme = draw(st.booleans())  # exact 0 and 1 and tiny probabilities: values only
    if extreme:
        p = draw(uniform(shape, dtype, specials=(0.0, 1.0, 1e-30, 1e-8, 1 - 1e-8)))
    else:
        floor = PROB_FLOOR[dtype]
        p = draw(uniform(shape, torch.float64, floor, 1 - floor)).to(dtype).clamp(floor, 1 - floor)
    target = draw(binary_targets(shape, dtype))
    kwargs = {}
    if draw(st.booleans()):
        kwargs["weight"] = draw(_broadcastable(shape, dtype))
    kwargs.update(draw(reduction_kwargs(legacy=True)))
    target_grad = draw(st.integers(0, 4)) == 4
    call = Call("binary_cross_entropy", (grad(draw(strided(p))), grad(target, target_grad)), kwargs)
    if extreme:
        values_only(call, "probabilities at or near 0 and 1, where the log is clamped")
    return call


@st.composite
def sigmoid_focal_loss_calls(draw, dtype):
    shape = draw(elementwise_shapes())
    x = draw(values(shape, dtype, specials=LOGIT_SPECIALS))
    target = draw(binary_targets(shape, dtype))
    alpha = draw(st.sampled_from((0.25, -1.0, 0.0, 0.5, 1.0)))
    gamma = draw(st.sampled_from((2.0, 0.0, 1.0, 1.5, 3.0)))
    reduction = draw(st.sampled_from(REDUCTIONS))
    return Call("sigmoid_focal_loss", (grad(x), target),
                dict(alpha=alpha, gamma=gamma, reduction=reduction))


@st.composite
def invalid_binary_calls(draw, name):
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 4)))  # last dim + 1 must not broadcast
    x = draw(uniform(shape, torch.float32, 0.05, 0.95))
    t = draw(uniform(shape, torch.float32))
    kinds = ["size mismatch", "bad reduction", "target on another device", "integer target",
             "integer input"]
    if name == "binary_cross_entropy":
        kinds += ["not a probability", "target dtype"]
    if name == "binary_cross_entropy_with_logits":
        kinds += ["weight shape", "pos_weight shape", "pos_weight on another device"]
    if name == "sigmoid_focal_loss":
        kinds.append("alpha outside [0, 1]")
    kind = draw(st.sampled_from(kinds))
    kwargs = {}
    expected = None
    if kind == "target on another device":
        t = on_other_device(t)
    elif kind == "pos_weight on another device":
        kwargs["pos_weight"] = on_other_device(torch.ones(shape[1]))
    elif kind == "integer target":  # torch computes the loss into a copy of 1 - target
        t = as_integers(t)
    elif kind == "integer input":  # log-sigmoid (or BCE) has no integer kernel
        x = as_integers(x)
    elif kind == "target dtype":  # BCE wants the input's dtype exactly
        t = t.to(draw(st.sampled_from((torch.float64, torch.float16))))
    elif kind == "alpha outside [0, 1]":  # torchvision's ValueError (-1 alone disables alpha)
        kwargs["alpha"] = draw(st.sampled_from((1.5, -0.5, 2.0)))
        return invalid(name, (x, t), kwargs, ValueError, kind)
    elif kind == "size mismatch":
        t = draw(uniform((shape[0], shape[1] + 1), torch.float32))
    elif kind == "bad reduction":
        kwargs["reduction"] = "avg"
    elif kind == "not a probability":
        x.view(-1)[0] = draw(st.sampled_from((1.5, -0.5)))
    elif kind == "weight shape":
        kwargs["weight"] = torch.ones(shape[1] + 1)
    elif kind == "pos_weight shape":
        kwargs["pos_weight"] = torch.ones(shape[1] + 1)
    if name == "sigmoid_focal_loss":  # torchvision's errors: its own ValueErrors, else torch's
        expected = {"size mismatch": ValueError, "bad reduction": ValueError,
                    "integer input": NotImplementedError}.get(kind, RuntimeError)
    return invalid(name, (x, t), kwargs, expected, kind)
