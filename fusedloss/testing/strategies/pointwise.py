"""Calls of the pointwise family: smooth_l1_loss, huber_loss, l1_loss, mse_loss.

Pairs with exact zeros of the difference and broadcast targets, torch 2.13's elementwise
weight (a weighted mean over zero total weight is values only), integer targets (promoted as
torch promotes) and complex L1 pairs (which torch supports: the reference runs them).
"""
import torch
from hypothesis import strategies as st

from ._common import (REDUCTIONS, Call, as_integers, complex_dtype, effective_reduction,
                      elementwise_shapes, grad, invalid, on_other_device, reduction_kwargs,
                      strided, uniform, values, values_only)


# Integer targets only where torch differentiates them: its Huber backward (and, before torch
# 2.13, its MSE backward) raises "Found dtype Long" where its forward takes them.
@st.composite
def _pointwise_pair(draw, dtype, integer_targets=False):
    shape = draw(elementwise_shapes())
    x = draw(values(shape, dtype, specials=(0.0, 1e4, -1e4)))
    target_shape = shape
    if shape and draw(st.integers(0, 5)) == 5:  # torch broadcasts (with a warning)
        target_shape = tuple(1 if draw(st.booleans()) else s for s in shape)
    y = draw(values(target_shape, dtype))
    if target_shape == shape and x.numel() and draw(st.booleans()):
        equal = draw(st.integers(0, x.numel()))  # some exact zeros of the difference
        y.view(-1)[:equal] = x.view(-1)[:equal]
    if integer_targets and draw(st.integers(0, 7)) == 7:  # torch promotes them to the input's dtype
        return grad(draw(strided(x))), as_integers(y)
    return grad(draw(strided(x))), grad(y, draw(st.integers(0, 3)) == 3)


@st.composite
def _elementwise_weight(draw, input, target):
    if not draw(st.booleans()):
        return None
    shape = torch.broadcast_shapes(input.shape, target.shape)
    return draw(uniform(shape, input.dtype, 0.0, 2.0, specials=(0.0,)))


@st.composite
def smooth_l1_loss_calls(draw, dtype):
    x, y = draw(_pointwise_pair(dtype, integer_targets=True))
    beta = draw(st.sampled_from((1.0, 0.0, 0.5, 1e-3, 2.0)))
    kwargs = dict(draw(reduction_kwargs(legacy=True)), beta=beta)
    return Call("smooth_l1_loss", (x, y), kwargs)


@st.composite
def huber_loss_calls(draw, dtype):
    x, y = draw(_pointwise_pair(dtype))
    kwargs = dict(reduction=draw(st.sampled_from(REDUCTIONS)),
                  delta=draw(st.sampled_from((1.0, 0.5, 1e-3, 2.0))))
    weight = draw(_elementwise_weight(x, y))
    if weight is not None:  # torch's weighted Huber mean divides by the count: no zero-weight guard
        kwargs["weight"] = weight
    return Call("huber_loss", (x, y), kwargs)


def _weighted_mean_guard(call, kwargs):
    weight = kwargs.get("weight")
    if weight is not None and effective_reduction(kwargs) == "mean" and float(weight.double().sum()) == 0:
        values_only(call, "weighted mean over zero total weight")
    return call


@st.composite
def _weighted_pointwise(draw, name, dtype):
    x, y = draw(_pointwise_pair(dtype, integer_targets=name == "l1_loss"))
    kwargs = dict(draw(reduction_kwargs(legacy=True)))
    weight = draw(_elementwise_weight(x, y))
    if weight is not None:
        kwargs["weight"] = weight
    return _weighted_mean_guard(Call(name, (x, y), kwargs), kwargs)


@st.composite
def l1_loss_calls(draw, dtype):
    if draw(st.integers(0, 7)) == 7:  # complex pairs: the modulus of the difference, as torch
        shape = draw(elementwise_shapes(max_elements=16))
        pair = [torch.complex(draw(values(shape, torch.float64)), draw(values(shape, torch.float64)))
                .to(complex_dtype(dtype)) for _ in range(2)]
        return Call("l1_loss", (grad(pair[0]), grad(pair[1], draw(st.booleans()))),
                    dict(reduction=draw(st.sampled_from(REDUCTIONS))), "complex inputs")
    return draw(_weighted_pointwise("l1_loss", dtype))


def mse_loss_calls(dtype):
    return _weighted_pointwise("mse_loss", dtype)


@st.composite
def invalid_pointwise_calls(draw, name):
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 4)))
    x = draw(values(shape, torch.float32))
    y = draw(values(shape, torch.float32))
    kinds = ["not broadcastable", "bad reduction"]
    if name == "smooth_l1_loss":
        kinds.append("negative beta")
    if name == "huber_loss":
        kinds.append("non-positive delta")
    if name in ("l1_loss", "mse_loss", "huber_loss"):
        kinds.append("weight size")
    kinds += ["target on another device", "bool operand",
              "integer mean" if name == "l1_loss" else "integer operands"]
    if name != "l1_loss":
        kinds.append("complex operand")
    kind = draw(st.sampled_from(kinds))
    kwargs = {}
    if kind == "target on another device":
        y = on_other_device(y)
    elif kind == "bool operand":  # l1 refuses the subtraction; the others a bool pair's kernel
        x, y = (x > 0, y > 0) if name != "l1_loss" or draw(st.booleans()) else (x, y > 0)
    elif kind == "integer mean":  # torch's mean of the integer differences has no dtype
        x, y, kwargs["reduction"] = as_integers(x), as_integers(y), "mean"
    elif kind == "integer operands":  # huber: an integer input cannot hold the float loss
        x, y = as_integers(x), (y if name == "huber_loss" and draw(st.booleans()) else as_integers(y))
    elif kind == "complex operand":
        x = torch.complex(x, y)
    elif kind == "not broadcastable":
        y = draw(values((shape[0], shape[1] + 1), torch.float32))
    elif kind == "bad reduction":
        kwargs["reduction"] = "avg"
    elif kind == "negative beta":
        kwargs["beta"] = -0.5
    elif kind == "non-positive delta":
        kwargs["delta"] = draw(st.sampled_from((0.0, -1.0)))
    else:
        kwargs["weight"] = torch.ones(shape[0] + 1, shape[1])
    return invalid(name, (x, y), kwargs, None, kind)
