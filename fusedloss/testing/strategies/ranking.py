"""Calls of the ranking family: margin_ranking_loss and rank_loss (RankNet).

Ties exactly at the hinge's kink are values only; labels binary or soft, right operands that
broadcast; integer operands, which torch promotes to floating point (never truncated).
"""
import torch
from hypothesis import strategies as st

from ._common import (REDUCTIONS, Call, as_integers, elementwise_shapes, grad, indices, invalid,
                      on_other_device, reduction_kwargs, uniform, values, values_only)


@st.composite
def margin_ranking_loss_calls(draw, dtype):
    shape = draw(elementwise_shapes(max_dims=2))
    x1 = draw(values(shape, dtype))
    x2 = draw(values(shape, dtype))
    if x1.numel() and draw(st.booleans()):  # ties: the hinge exactly at its kink when margin = 0
        x2.view(-1)[0] = x1.view(-1)[0]
    target = draw(st.sampled_from(((-1.0, 1.0), (1.0,), (-1.0, 0.0, 1.0))))
    target = torch.tensor(target, dtype=dtype)[draw(indices(shape, len(target)))]
    margin = draw(st.sampled_from((0.0, 0.5, 1.0, -0.5)))
    kwargs = dict(margin=margin, **draw(reduction_kwargs(legacy=True)))
    if draw(st.integers(0, 5)) == 5:  # integer scores and labels: float32 losses, as torch
        x1, x2, target = as_integers(x1), as_integers(x2), target.to(torch.int64)
        return Call("margin_ranking_loss", (x1, x2, target), kwargs, "integer operands")
    call = Call("margin_ranking_loss", (grad(x1), grad(x2), target), kwargs)
    hinge = -target.double() * (x1.double() - x2.double()) + margin
    scale = x1.double().abs() + x2.double().abs() + abs(margin) + 1
    slack = 1e-5 if dtype in (torch.float32, torch.float64) else 5e-2
    if bool((hinge.abs() <= slack * scale).any()):
        values_only(call, "a hinge at (or within rounding of) its kink")
    return call


@st.composite
def rank_loss_calls(draw, dtype):
    shape = draw(elementwise_shapes(max_dims=2))
    label = draw(st.sampled_from(("binary", "soft")))
    label = draw(indices(shape, 2)).to(dtype) if label == "binary" else draw(uniform(shape, dtype))
    if draw(st.integers(0, 7)) == 7:  # integer labels: promoted to the scores' dtype
        label = as_integers(label)
    left = draw(values(shape, dtype, specials=(0.0, 50.0, -50.0)))
    right = draw(values(shape if draw(st.booleans()) else shape[-1:], dtype))
    return Call("rank_loss", (grad(label, draw(st.integers(0, 3)) == 3), grad(left), grad(right)),
                dict(reduction=draw(st.sampled_from(REDUCTIONS))))


@st.composite
def invalid_margin_ranking_loss_calls(draw, name):
    n = draw(st.integers(2, 4))  # n + 1 against n must not broadcast
    x1, x2 = draw(values((n,), torch.float32)), draw(values((n,), torch.float32))
    y = torch.ones(n)
    kind = draw(st.sampled_from(("dims differ", "bad reduction", "not broadcastable",
                                 "target on another device", "bool operand", "complex operands")))
    kwargs = {}
    if kind == "target on another device":
        y = on_other_device(y)
    elif kind == "bool operand":
        x1, x2, y = draw(st.sampled_from(((x1 > 0, x2, y), (x1, x2 > 0, y), (x1, x2, y > 0))))
    elif kind == "complex operands":  # torch's hinge (a clamp) has no complex form
        x1, x2 = torch.complex(x1, x2), torch.complex(x2, x1)
    elif kind == "dims differ":
        y = torch.ones(n, 1)
    elif kind == "not broadcastable":
        x2 = draw(values((n + 1,), torch.float32))
    else:
        kwargs["reduction"] = "avg"
    return invalid(name, (x1, x2, y), kwargs, None, kind)


@st.composite
def invalid_rank_loss_calls(draw, name):
    n = draw(st.integers(2, 4))  # n + 1 against n must not broadcast
    args = (torch.ones(n), draw(values((n,), torch.float32)), draw(values((n,), torch.float32)))
    kind = draw(st.sampled_from(("bad reduction", "not broadcastable", "label on another device")))
    if kind == "label on another device":
        return invalid(name, (on_other_device(args[0]),) + args[1:], {}, RuntimeError, kind)
    if kind == "bad reduction":
        return invalid(name, args, {"reduction": "avg"}, ValueError, kind)
    return invalid(name, (torch.ones(n + 1),) + args[1:], {}, RuntimeError, kind)
