"""Calls of the cross-entropy family: cross_entropy, nll_loss, softmax_focal_loss.

Class layouts (N, C), unbatched (C,) and N-d, hard targets with ignored tokens (all of them
sometimes), soft labels, class weights with zeros, -inf logits.
"""
import math

import torch
from hypothesis import strategies as st

from ._common import (LOGIT_SPECIALS, REDUCTIONS, Call, as_integers, batch_sizes, class_counts,
                      effective_reduction, grad, indices, invalid, on_other_device,
                      reduction_kwargs, strided, uniform, values, values_only)


@st.composite
def _class_layout(draw, num_classes, max_tokens=8):
    """(input shape, target shape) for (N, C), unbatched (C,) or N-d (N, C, d1[, d2])."""
    layout = draw(st.sampled_from(("2d", "unbatched", "nd")))
    if num_classes > 1024:
        n = draw(st.integers(0, 3))
        return (n, num_classes), (n,)
    if layout == "unbatched":
        return (num_classes,), ()
    n = draw(batch_sizes())
    if layout == "2d":
        return (n, num_classes), (n,)
    extra = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    while n * math.prod(extra) > max_tokens and n > 1:
        n -= 1
    return (n, num_classes) + extra, (n,) + extra


def _classes_last(x):
    return x.unsqueeze(0) if x.dim() == 1 else x.movedim(1, -1)


def _keep_a_finite_logit(x):
    """Rows whose logits are all -inf have no distribution; give each such row one 0 logit."""
    rows = _classes_last(x)
    dead = torch.isneginf(rows).all(-1)
    if bool(dead.any()):
        first = rows[..., 0]
        first[dead] = 0
    return x


@st.composite
def hard_targets(draw, target_shape, num_classes, ignore_index):
    target = draw(indices(target_shape, num_classes))
    flat = target.view(-1)
    if flat.numel():
        mode = draw(st.sampled_from(("some", "none", "all")))
        if mode == "all":
            flat[:] = ignore_index
        elif mode == "some":
            for _ in range(draw(st.integers(0, 2))):
                flat[draw(st.integers(0, flat.numel() - 1))] = ignore_index
    return target


@st.composite
def ignore_indices(draw, num_classes):
    return draw(st.sampled_from((-100, -1, 0, num_classes - 1, num_classes + 3)))


def mean_denominator(target, weight, ignore_index, num_classes):
    kept = target != ignore_index
    safe = torch.where(kept, target, 0)
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.double()
    return float((w[safe] * kept).sum()) if target.numel() else 0.0


@st.composite
def class_weights(draw, num_classes, dtype, zeros=True):
    if not draw(st.booleans()):
        return None
    w = draw(uniform((num_classes,), dtype, 0.0, 2.0, specials=(0.0,) if zeros else ()))
    return w if zeros else w.clamp(min=0.05)


@st.composite
def cross_entropy_calls(draw, dtype):
    num_classes = draw(class_counts())
    shape, target_shape = draw(_class_layout(num_classes))
    soft = draw(st.integers(0, 3)) == 3
    label_smoothing = draw(st.sampled_from((0.0, 0.0, 0.1, 0.5, 1.0)))
    extras = {}
    if draw(st.booleans()):
        extras["z_loss"] = draw(st.sampled_from((1e-4, 0.0, 0.1)))
    if draw(st.booleans()):
        extras["softcap"] = draw(st.sampled_from((30.0, 1.0, 5.0)))
    if draw(st.integers(0, 3)) == 3:
        extras["return_lse"] = True
    if draw(st.integers(0, 5)) == 5:
        extras["inplace_backward"] = True
    # -inf logits (masked vocabulary) are legal with hard labels and no smoothing
    neg_inf = not soft and label_smoothing == 0.0 and draw(st.booleans())
    specials = LOGIT_SPECIALS + ((-math.inf,) * 3 if neg_inf else ())
    logits = draw(values(shape, torch.float64, specials=specials))
    logits = _keep_a_finite_logit(logits).to(dtype)
    weight = draw(class_weights(num_classes, dtype, zeros=not neg_inf))
    reduction = draw(reduction_kwargs(legacy=True))
    kwargs = dict(weight=weight, **reduction)
    if label_smoothing:
        kwargs["label_smoothing"] = label_smoothing
    note = ""
    if soft:
        probs = draw(values(shape, torch.float64, scale=draw(st.sampled_from((1.0, 10.0, 1e3)))))
        probs = probs.softmax(1 if probs.dim() > 1 else 0)  # 1e3 scale gives exact 0s and 1s
        target = grad(probs.to(dtype), draw(st.booleans()))  # distillation differentiates q
        note = "soft labels" + (" requiring grad" if target.requires_grad else "")
    else:
        ignore_index = draw(ignore_indices(num_classes))
        target = draw(hard_targets(target_shape, num_classes, ignore_index))
        if ignore_index != -100 or draw(st.booleans()):
            kwargs["ignore_index"] = ignore_index
    logits = draw(strided(logits))
    call = Call("cross_entropy", (grad(logits), target), {**kwargs, **extras}, note)
    if (not soft and effective_reduction(reduction) == "mean"
            and mean_denominator(target, weight, kwargs.get("ignore_index", -100), num_classes) == 0):
        values_only(call, "mean over zero total weight (all ignored)")
    return call


@st.composite
def nll_loss_calls(draw, dtype):
    num_classes = draw(class_counts())
    shape, target_shape = draw(_class_layout(num_classes))
    log_probs = draw(values(shape, torch.float64))
    if draw(st.booleans()):
        log_probs = log_probs.log_softmax(1 if log_probs.dim() > 1 else 0)
    neg_inf = draw(st.booleans())
    if neg_inf and log_probs.numel():
        log_probs.view(-1)[draw(st.integers(0, log_probs.numel() - 1))] = -math.inf
    log_probs = log_probs.to(dtype)
    weight = draw(class_weights(num_classes, dtype, zeros=not neg_inf))
    ignore_index = draw(ignore_indices(num_classes))
    target = draw(hard_targets(target_shape, num_classes, ignore_index))
    reduction = draw(reduction_kwargs(legacy=True))
    call = Call("nll_loss", (grad(draw(strided(log_probs))), target),
                dict(weight=weight, ignore_index=ignore_index, **reduction))
    if effective_reduction(reduction) == "mean" and mean_denominator(target, weight, ignore_index, num_classes) == 0:
        values_only(call, "mean over zero total weight (all ignored)")
    return call


@st.composite
def softmax_focal_loss_calls(draw, dtype):
    num_classes = draw(class_counts())
    shape, target_shape = draw(_class_layout(num_classes))
    logits = draw(values(shape, dtype, specials=LOGIT_SPECIALS))
    alpha = draw(class_weights(num_classes, dtype))
    gamma = draw(st.sampled_from((2.0, 0.0, 1.0, 1.5, 3.0)))
    ignore_index = draw(ignore_indices(num_classes))
    target = draw(hard_targets(target_shape, num_classes, ignore_index))
    reduction = draw(st.sampled_from(REDUCTIONS))
    call = Call("softmax_focal_loss", (grad(draw(strided(logits))), target),
                dict(alpha=alpha, gamma=gamma, ignore_index=ignore_index, reduction=reduction))
    if reduction == "mean" and not bool((target != ignore_index).any()):
        values_only(call, "mean over no kept token")
    return call


@st.composite
def invalid_class_index_calls(draw, name):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(2, 9))
    x = draw(values((n, c), torch.float32))
    t = draw(indices((n,), c))
    kind = draw(st.sampled_from(("target out of range", "negative target", "batch mismatch",
                                 "bad reduction", "weight size", "multi-target",
                                 "extras" if name == "cross_entropy" else "bad reduction",
                                 "label_smoothing" if name == "cross_entropy" else "weight size",
                                 "weight dtype", "target on another device",
                                 "weight on another device", "integer logits")))
    kwargs = {}
    if kind == "weight dtype":  # torch wants the class weight in the input's dtype exactly
        kwargs["weight"] = torch.ones(c, dtype=draw(st.sampled_from((torch.float64, torch.float16))))
    elif kind == "target on another device":
        t = on_other_device(t)
    elif kind == "weight on another device":
        kwargs["weight"] = on_other_device(torch.ones(c))
    elif kind == "integer logits":  # log_softmax has no integer kernel
        x = as_integers(x)
    elif kind == "target out of range":
        t[draw(st.integers(0, n - 1))] = c + draw(st.integers(0, 3))
    elif kind == "negative target":
        t[0] = -2
    elif kind == "batch mismatch":
        t = draw(indices((n + draw(st.integers(1, 3)),), c))
    elif kind == "bad reduction":
        # ('elementwise_mean' is not here: torch still accepts it as a deprecated 'mean')
        kwargs["reduction"] = draw(st.sampled_from(("avg", "", "Mean")))
    elif kind == "weight size":
        kwargs["weight"] = torch.ones(c + 1)
    elif kind == "multi-target":
        t = draw(indices((n, 2), c))
    elif kind == "label_smoothing":
        kwargs["label_smoothing"] = 1.5  # (torch accepts a negative label_smoothing)
    elif kind == "extras":
        kwargs.update(draw(st.sampled_from(({"z_loss": -1.0}, {"softcap": 0.0}, {"softcap": -2.0}))))
        return invalid(name, (x, t), kwargs, ValueError, kind)
    if name == "softmax_focal_loss":
        if "weight" in kwargs:
            kwargs = {"alpha": kwargs.pop("weight")}
        expected = {"target out of range": IndexError, "negative target": IndexError,
                    "batch mismatch": ValueError, "bad reduction": ValueError,
                    "integer logits": NotImplementedError}.get(kind, RuntimeError)
        if kind == "bad reduction" and draw(st.booleans()):
            kwargs, kind, expected = {"gamma": -1.0}, "negative gamma", ValueError
        return invalid(name, (x, t), kwargs, expected, kind)
    return invalid(name, (x, t), kwargs, None, kind)
