"""Hypothesis strategies that generate whole calls of every fusedloss function.

`calls(name)` draws valid calls of `fusedloss.functional.<name>` (a `Call`: the function name,
positional and keyword arguments, all CPU tensors), covering shapes (1-element and empty batches,
odd vocabularies, N-d inputs, a few rows just past a 1024-column kernel block), every option and
reduction, the four float dtypes, and extreme but legal values (logits of +-1e4 and -inf,
probabilities of exactly 0 and 1, all-ignored batches, soft labels, CTC lengths at their limits,
CRF masks). `invalid_calls(name)` draws calls that must raise (`InvalidCall`).

Where a gradient is undefined or discontinuous at the drawn values (BCE at p = 0 or 1, a margin
ranking hinge exactly at its kink, a mean over zero weight, an infeasible CTC alignment without
zero_infinity) the call is generated with no tensor requiring grad, so only values are compared
there and the comparison stays meaningful.

Values come from a seeded torch generator whose seed, scale and injected special values are
drawn by hypothesis, so shrinking reduces shapes, options and values alike while a drawn call
stays cheap to generate even with 1000+ columns.

hypothesis is a test extra: importing this module without it raises an ImportError that says so.
"""
import dataclasses
import math

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised only without the test extra
    raise ImportError("fusedloss.testing's strategies and fuzz() need hypothesis, a test extra: "
                      "pip install 'fusedloss[test]' (or pip install hypothesis)") from error

import torch

__all__ = ["LOSSES", "Call", "InvalidCall", "calls", "invalid_calls"]


@dataclasses.dataclass
class Call:
    """One call `fusedloss.functional.<fn_name>(*args, **kwargs)`; `note` says what is special."""
    fn_name: str
    args: tuple
    kwargs: dict
    note: str = ""

    def to(self, device):
        """The same call with every tensor moved to `device` (requires_grad kept)."""
        return dataclasses.replace(self, args=tuple(_to(a, device) for a in self.args),
                                   kwargs={k: _to(v, device) for k, v in self.kwargs.items()})

    def __repr__(self):
        def show(value):
            if torch.is_tensor(value):
                grad = " requires_grad" if value.requires_grad else ""
                return f"tensor{list(value.shape)}:{str(value.dtype).replace('torch.', '')}{grad}"
            return repr(value)
        parts = [show(a) for a in self.args] + [f"{k}={show(v)}" for k, v in self.kwargs.items()]
        return f"{self.fn_name}({', '.join(parts)})" + (f"  # {self.note}" if self.note else "")


@dataclasses.dataclass
class InvalidCall(Call):
    """A call that must raise. `expected` is the exception type for losses without a torch twin;
    for twins the test takes torch.nn.functional's exception on the same call as the truth."""
    expected: type = Exception


def _to(value, device):
    if not torch.is_tensor(value):
        return value
    moved = value.detach().to(device)
    return moved.requires_grad_(value.requires_grad) if moved.is_floating_point() else moved


# --- building blocks ------------------------------------------------------------------------

# float32 first: hypothesis shrinks towards the first choice, so a minimal failure is fp32 when
# the dtype does not matter.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")
LOGIT_SPECIALS = (1e4, -1e4, 0.0, 30.0, -30.0)
# Smallest probability with a meaningful BCE gradient per dtype (log clamps and 1 - p rounding).
_PROB_FLOOR = {torch.float32: 1e-5, torch.float64: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def batch_sizes(high=6):
    """0..high, with 1 and small sizes most likely (hypothesis shrinks towards 0: empty batches)."""
    return st.integers(0, high)


@st.composite
def class_counts(draw, low=1, small=64, large=(1025, 1040)):
    """Mostly <= `small` classes (odd ones included); one draw in ten crosses a 1024 block."""
    if draw(st.integers(0, 9)) == 9:
        return draw(st.integers(*large))
    return draw(st.integers(low, small))


@st.composite
def values(draw, shape, dtype, scale=None, specials=(), max_specials=3):
    """A float tensor: seeded normal values times a drawn scale, plus a few special values."""
    seed = draw(st.integers(0, 2 ** 24))
    if scale is None:
        scale = draw(st.sampled_from((1.0, 3.0, 0.1, 20.0)))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    flat = x.view(-1)
    if specials and flat.numel():
        for _ in range(draw(st.integers(0, max_specials))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(specials))
    return x.to(dtype)


@st.composite
def uniform(draw, shape, dtype, low=0.0, high=1.0, specials=()):
    seed = draw(st.integers(0, 2 ** 24))
    generator = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)
    flat = x.view(-1)
    if specials and flat.numel():
        for _ in range(draw(st.integers(0, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(specials))
    return x.to(dtype)


@st.composite
def indices(draw, shape, high, low=0):
    """int64 indices in [low, high) (high > low), seeded."""
    seed = draw(st.integers(0, 2 ** 24))
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int64)


@st.composite
def reduction_kwargs(draw, legacy=False):
    """{'reduction': ...}, or for torch twins sometimes the deprecated size_average/reduce pair."""
    if legacy and draw(st.integers(0, 7)) == 7:
        return {"size_average": draw(st.sampled_from((None, True, False))),
                "reduce": draw(st.sampled_from((True, False, None)))}
    return {"reduction": draw(st.sampled_from(REDUCTIONS))}


def effective_reduction(kwargs):
    if "reduction" in kwargs:
        return kwargs["reduction"]
    if kwargs.get("reduce") is False:
        return "none"
    return "sum" if kwargs.get("size_average") is False else "mean"


@st.composite
def strided(draw, tensor):
    """Sometimes the same 2-D values in a transposed (non-contiguous) layout."""
    if tensor.dim() == 2 and tensor.numel() > 1 and draw(st.integers(0, 4)) == 4:
        return tensor.t().contiguous().t()
    return tensor


def grad(tensor, on=True):
    return tensor.requires_grad_(bool(on)) if tensor.is_floating_point() else tensor


def values_only(call, why):
    """The call with no tensor requiring grad: the gradient is undefined or discontinuous there."""
    for value in list(call.args) + list(call.kwargs.values()):
        if torch.is_tensor(value):
            value.requires_grad_(False)
    call.note = (call.note + "; " if call.note else "") + f"values only: {why}"
    return call


# --- softmax family -------------------------------------------------------------------------

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
def _hard_targets(draw, target_shape, num_classes, ignore_index):
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
def _ignore_index(draw, num_classes):
    return draw(st.sampled_from((-100, -1, 0, num_classes - 1, num_classes + 3)))


def _mean_denominator(target, weight, ignore_index, num_classes):
    kept = target != ignore_index
    safe = torch.where(kept, target, 0)
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.double()
    return float((w[safe] * kept).sum()) if target.numel() else 0.0


@st.composite
def _class_weight(draw, num_classes, dtype, zeros=True):
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
    weight = draw(_class_weight(num_classes, dtype, zeros=not neg_inf))
    reduction = draw(reduction_kwargs(legacy=True))
    kwargs = dict(weight=weight, **reduction)
    if label_smoothing:
        kwargs["label_smoothing"] = label_smoothing
    note = ""
    if soft:
        probs = draw(values(shape, torch.float64, scale=draw(st.sampled_from((1.0, 10.0, 1e3)))))
        probs = probs.softmax(1 if probs.dim() > 1 else 0)  # 1e3 scale gives exact 0s and 1s
        target = probs.to(dtype)
        note = "soft labels"
    else:
        ignore_index = draw(_ignore_index(num_classes))
        target = draw(_hard_targets(target_shape, num_classes, ignore_index))
        if ignore_index != -100 or draw(st.booleans()):
            kwargs["ignore_index"] = ignore_index
    logits = draw(strided(logits))
    call = Call("cross_entropy", (grad(logits), target), {**kwargs, **extras}, note)
    if (not soft and effective_reduction(reduction) == "mean"
            and _mean_denominator(target, weight, kwargs.get("ignore_index", -100), num_classes) == 0):
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
    weight = draw(_class_weight(num_classes, dtype, zeros=not neg_inf))
    ignore_index = draw(_ignore_index(num_classes))
    target = draw(_hard_targets(target_shape, num_classes, ignore_index))
    reduction = draw(reduction_kwargs(legacy=True))
    call = Call("nll_loss", (grad(draw(strided(log_probs))), target),
                dict(weight=weight, ignore_index=ignore_index, **reduction))
    if effective_reduction(reduction) == "mean" and _mean_denominator(target, weight, ignore_index, num_classes) == 0:
        values_only(call, "mean over zero total weight (all ignored)")
    return call


@st.composite
def softmax_focal_loss_calls(draw, dtype):
    num_classes = draw(class_counts())
    shape, target_shape = draw(_class_layout(num_classes))
    logits = draw(values(shape, dtype, specials=LOGIT_SPECIALS))
    alpha = draw(_class_weight(num_classes, dtype))
    gamma = draw(st.sampled_from((2.0, 0.0, 1.0, 1.5, 3.0)))
    ignore_index = draw(_ignore_index(num_classes))
    target = draw(_hard_targets(target_shape, num_classes, ignore_index))
    reduction = draw(st.sampled_from(REDUCTIONS))
    call = Call("softmax_focal_loss", (grad(draw(strided(logits))), target),
                dict(alpha=alpha, gamma=gamma, ignore_index=ignore_index, reduction=reduction))
    if reduction == "mean" and not bool((target != ignore_index).any()):
        values_only(call, "mean over no kept token")
    return call


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
    weight = draw(_class_weight(num_classes, dtype))
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
        target = draw(_hard_targets(logits_shape[:-1], num_classes,
                                    -100 if ignore_index is None else ignore_index))
        if ignore_index is not None:
            kwargs["ignore_index"] = ignore_index
    call = Call("linear_cross_entropy", (grad(x), grad(w), target), kwargs,
                "soft labels" if soft else "")
    ignore = kwargs.get("ignore_index", -100)
    if (not soft and kwargs["reduction"] == "mean"
            and _mean_denominator(target, weight, ignore, num_classes) == 0):
        values_only(call, "mean over zero total weight (all ignored)")
    return call


# --- binary family --------------------------------------------------------------------------

@st.composite
def _shape(draw, max_elements=48, max_dims=3):
    dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=max_dims))
    while math.prod(dims) > max_elements:
        dims[dims.index(max(dims))] -= 1
    if draw(st.integers(0, 9)) == 9:  # one flat case past a 1024 elementwise block
        return (draw(st.integers(1025, 1100)),)
    return tuple(dims)


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
    shape = draw(_shape())
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
    shape = draw(_shape())
    extreme = draw(st.booleans())  # exact 0 and 1 and tiny probabilities: values only
    if extreme:
        p = draw(uniform(shape, dtype, specials=(0.0, 1.0, 1e-30, 1e-8, 1 - 1e-8)))
    else:
        floor = _PROB_FLOOR[dtype]
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
    shape = draw(_shape())
    x = draw(values(shape, dtype, specials=LOGIT_SPECIALS))
    target = draw(binary_targets(shape, dtype))
    alpha = draw(st.sampled_from((0.25, -1.0, 0.0, 0.5, 1.0)))
    gamma = draw(st.sampled_from((2.0, 0.0, 1.0, 1.5, 3.0)))
    reduction = draw(st.sampled_from(REDUCTIONS))
    return Call("sigmoid_focal_loss", (grad(x), target),
                dict(alpha=alpha, gamma=gamma, reduction=reduction))


# --- regression family ----------------------------------------------------------------------

@st.composite
def _regression_pair(draw, dtype):
    shape = draw(_shape())
    x = draw(values(shape, dtype, specials=(0.0, 1e4, -1e4)))
    target_shape = shape
    if shape and draw(st.integers(0, 5)) == 5:  # torch broadcasts (with a warning)
        target_shape = tuple(1 if draw(st.booleans()) else s for s in shape)
    y = draw(values(target_shape, dtype))
    if target_shape == shape and x.numel() and draw(st.booleans()):
        equal = draw(st.integers(0, x.numel()))  # some exact zeros of the difference
        y.view(-1)[:equal] = x.view(-1)[:equal]
    return grad(draw(strided(x))), grad(y, draw(st.integers(0, 3)) == 3)


@st.composite
def _elementwise_weight(draw, input, target):
    if not draw(st.booleans()):
        return None
    shape = torch.broadcast_shapes(input.shape, target.shape)
    return draw(uniform(shape, input.dtype, 0.0, 2.0, specials=(0.0,)))


@st.composite
def smooth_l1_loss_calls(draw, dtype):
    x, y = draw(_regression_pair(dtype))
    beta = draw(st.sampled_from((1.0, 0.0, 0.5, 1e-3, 2.0)))
    kwargs = dict(draw(reduction_kwargs(legacy=True)), beta=beta)
    return Call("smooth_l1_loss", (x, y), kwargs)


@st.composite
def huber_loss_calls(draw, dtype):
    x, y = draw(_regression_pair(dtype))
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
def _weighted_regression(draw, name, dtype):
    x, y = draw(_regression_pair(dtype))
    kwargs = dict(draw(reduction_kwargs(legacy=True)))
    weight = draw(_elementwise_weight(x, y))
    if weight is not None:
        kwargs["weight"] = weight
    return _weighted_mean_guard(Call(name, (x, y), kwargs), kwargs)


def l1_loss_calls(dtype):
    return _weighted_regression("l1_loss", dtype)


def mse_loss_calls(dtype):
    return _weighted_regression("mse_loss", dtype)


# --- ranking and overlap --------------------------------------------------------------------

@st.composite
def margin_ranking_loss_calls(draw, dtype):
    shape = draw(_shape(max_dims=2))
    x1 = draw(values(shape, dtype))
    x2 = draw(values(shape, dtype))
    if x1.numel() and draw(st.booleans()):  # ties: the hinge exactly at its kink when margin = 0
        x2.view(-1)[0] = x1.view(-1)[0]
    target = draw(st.sampled_from(((-1.0, 1.0), (1.0,), (-1.0, 0.0, 1.0))))
    target = torch.tensor(target, dtype=dtype)[draw(indices(shape, len(target)))]
    margin = draw(st.sampled_from((0.0, 0.5, 1.0, -0.5)))
    kwargs = dict(margin=margin, **draw(reduction_kwargs(legacy=True)))
    call = Call("margin_ranking_loss", (grad(x1), grad(x2), target), kwargs)
    hinge = -target.double() * (x1.double() - x2.double()) + margin
    scale = x1.double().abs() + x2.double().abs() + abs(margin) + 1
    slack = 1e-5 if dtype in (torch.float32, torch.float64) else 5e-2
    if bool((hinge.abs() <= slack * scale).any()):
        values_only(call, "a hinge at (or within rounding of) its kink")
    return call


@st.composite
def rank_loss_calls(draw, dtype):
    shape = draw(_shape(max_dims=2))
    label = draw(st.sampled_from(("binary", "soft")))
    label = draw(indices(shape, 2)).to(dtype) if label == "binary" else draw(uniform(shape, dtype))
    left = draw(values(shape, dtype, specials=(0.0, 50.0, -50.0)))
    right = draw(values(shape if draw(st.booleans()) else shape[-1:], dtype))
    return Call("rank_loss", (grad(label, draw(st.integers(0, 3)) == 3), grad(left), grad(right)),
                dict(reduction=draw(st.sampled_from(REDUCTIONS))))


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


# --- CTC ------------------------------------------------------------------------------------

def _ctc_frames_needed(labels):
    """Fewest frames that can emit `labels`: one per label plus a blank between repeats."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))


@st.composite
def _ctc_call(draw, name, dtype):
    num_classes = draw(st.integers(2, 8)) if draw(st.integers(0, 9)) < 9 else draw(st.integers(20, 40))
    blank = draw(st.sampled_from((0, num_classes - 1, num_classes // 2)))
    labels_pool = [c for c in range(num_classes) if c != blank]
    unbatched = draw(st.integers(0, 5)) == 5
    batch = 1 if unbatched else draw(st.integers(1, 4))
    frames = draw(st.integers(1, 12))
    max_target = draw(st.integers(0, 6))
    zero_infinity = draw(st.booleans())
    rows, input_lengths = [], []
    for _ in range(batch):
        length = draw(st.sampled_from((max_target, 0, 1, max_target // 2)))
        row = [labels_pool[i % len(labels_pool)] for i in draw(st.lists(
            st.integers(0, len(labels_pool) - 1), min_size=length, max_size=length))]
        if row and draw(st.booleans()):  # repeats need a blank in between
            row[-1] = row[0]
        rows.append(row)
        needed = _ctc_frames_needed(row)
        limit = draw(st.sampled_from(("full", "tight", "any")))
        if limit == "full" or needed > frames:
            input_lengths.append(frames if limit == "full" else draw(st.integers(0, frames)))
        elif limit == "tight":
            input_lengths.append(needed)
        else:
            input_lengths.append(draw(st.integers(0, frames)))
    target_lengths = [len(r) for r in rows]
    width = max(target_lengths, default=0)
    if unbatched:  # torch takes an unbatched target as exactly its labels, no padding
        targets = torch.tensor(rows[0], dtype=torch.int64)
    elif draw(st.booleans()):  # padded (N, S), padding with a label value
        pad = draw(st.sampled_from((0, blank, num_classes - 1)))
        padded = [r + [pad] * (width - len(r) + draw(st.integers(0, 1))) for r in rows]
        extra = max(len(r) for r in padded)
        targets = torch.tensor([r + [pad] * (extra - len(r)) for r in padded], dtype=torch.int64)
    else:
        targets = torch.tensor([c for r in rows for c in r], dtype=torch.int64)
    scale = draw(st.sampled_from((1.0, 3.0, 10.0)))
    shape = (frames, num_classes) if unbatched else (frames, batch, num_classes)
    logits = draw(values(shape, torch.float64, scale=scale,
                         specials=(1e4, -1e4) if name == "ctc_loss_with_logits" else ()))
    first = logits.to(dtype) if name == "ctc_loss_with_logits" else logits.log_softmax(-1).to(dtype)
    as_list = draw(st.booleans())
    if unbatched:
        il, tl = (input_lengths[0], target_lengths[0]) if not as_list else (input_lengths, target_lengths)
        il = torch.tensor(il) if not as_list else il
        tl = torch.tensor(tl) if not as_list else tl
    else:
        il, tl = (input_lengths, target_lengths) if as_list else (
            torch.tensor(input_lengths), torch.tensor(target_lengths))
    kwargs = dict(blank=blank, reduction=draw(st.sampled_from(REDUCTIONS)), zero_infinity=zero_infinity)
    call = Call(name, (grad(first), targets, il, tl), kwargs)
    infeasible = any(_ctc_frames_needed(r) > n for r, n in zip(rows, input_lengths))
    if infeasible and not zero_infinity:
        values_only(call, "an infeasible alignment (infinite loss) without zero_infinity")
    return call


def ctc_loss_calls(dtype):
    return _ctc_call("ctc_loss", dtype)


def ctc_loss_with_logits_calls(dtype):
    return _ctc_call("ctc_loss_with_logits", dtype)


# --- CRF ------------------------------------------------------------------------------------

@st.composite
def _crf_parts(draw, dtype, exact=False, min_tags=1):
    batch = draw(st.integers(0, 4)) if draw(st.integers(0, 9)) == 9 else draw(st.integers(1, 4))
    steps = draw(st.integers(1, 6))
    # one tag makes the NLL exactly 0 = log Z - score: all rounding, no relative tolerance holds
    tags = draw(st.integers(min_tags, 8)) if draw(st.integers(0, 9)) < 9 else draw(st.integers(30, 40))

    def scores(shape):
        if exact:  # multiples of 1/4: every path score is exact in every dtype, ties are real ties
            return (draw(indices(shape, 17, -16)).double() / 4).to(dtype)
        # no +-1e4 here: a CRF loss is a difference of path scores, so huge scores make it a
        # cancellation that no fp32 evaluation can meet a relative tolerance on
        return draw(values(shape, dtype, scale=draw(st.sampled_from((1.0, 3.0))),
                           specials=(0.0, 8.0, -8.0)))

    emissions = scores((batch, steps, tags))
    parts = [emissions, scores((tags, tags)), scores((tags,)), scores((tags,))]
    mask = None
    if draw(st.booleans()):
        lengths = [draw(st.sampled_from((steps, 1, max(1, steps - 1)))) for _ in range(batch)]
        mask = torch.arange(steps).unsqueeze(0) < torch.tensor(lengths, dtype=torch.int64).reshape(-1, 1)
        if draw(st.integers(0, 4)) == 4:
            mask = mask.to(torch.uint8)
    return parts, mask, tags


@st.composite
def crf_nll_calls(draw, dtype):
    (emissions, transitions, start, end), mask, num_tags = draw(_crf_parts(dtype, min_tags=2))
    tags = draw(indices(emissions.shape[:2], num_tags))
    return Call("crf_nll", (grad(emissions), tags, grad(transitions), grad(start), grad(end)),
                dict(mask=mask, reduction=draw(st.sampled_from(REDUCTIONS))))


@st.composite
def crf_decode_calls(draw, dtype):
    (emissions, transitions, start, end), mask, _ = draw(_crf_parts(dtype, exact=True))
    return Call("crf_decode", (emissions, transitions, start, end), dict(mask=mask),
                "exact scores (ties go to the lowest tag)")


@st.composite
def crf_marginals_calls(draw, dtype):
    (emissions, transitions, start, end), mask, _ = draw(_crf_parts(dtype))
    return Call("crf_marginals", (grad(emissions), grad(transitions), grad(start), grad(end)),
                dict(mask=mask))


# --- hierarchical sigmoid and NCE -----------------------------------------------------------

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


_VALID = {
    "cross_entropy": cross_entropy_calls,
    "nll_loss": nll_loss_calls,
    "softmax_focal_loss": softmax_focal_loss_calls,
    "linear_cross_entropy": linear_cross_entropy_calls,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits_calls,
    "binary_cross_entropy": binary_cross_entropy_calls,
    "sigmoid_focal_loss": sigmoid_focal_loss_calls,
    "smooth_l1_loss": smooth_l1_loss_calls,
    "huber_loss": huber_loss_calls,
    "l1_loss": l1_loss_calls,
    "mse_loss": mse_loss_calls,
    "margin_ranking_loss": margin_ranking_loss_calls,
    "rank_loss": rank_loss_calls,
    "dice_loss": dice_loss_calls,
    "ctc_loss": ctc_loss_calls,
    "ctc_loss_with_logits": ctc_loss_with_logits_calls,
    "crf_nll": crf_nll_calls,
    "crf_decode": crf_decode_calls,
    "crf_marginals": crf_marginals_calls,
    "hsigmoid_loss": hsigmoid_loss_calls,
    "nce_loss": nce_loss_calls,
}

LOSSES = tuple(_VALID)


def _check_name(name):
    if name not in _VALID:
        raise ValueError(f"unknown loss {name!r}; the fuzzer knows: {', '.join(LOSSES)}")


def calls(name, dtypes=FLOAT_DTYPES):
    """Strategy of valid calls of fusedloss.functional.<name> with floating inputs of `dtypes`
    (float32 first: minimal failures shrink towards it)."""
    _check_name(name)
    return st.sampled_from(tuple(dtypes)).flatmap(_VALID[name])


# --- invalid calls --------------------------------------------------------------------------

def _invalid(name, args, kwargs, expected, note):
    return InvalidCall(name, tuple(args), dict(kwargs), note, expected)


@st.composite
def _invalid_softmax(draw, name):
    n = draw(st.integers(1, 4))
    c = draw(st.integers(2, 9))
    x = draw(values((n, c), torch.float32))
    t = draw(indices((n,), c))
    kind = draw(st.sampled_from(("target out of range", "negative target", "batch mismatch",
                                 "bad reduction", "weight size", "multi-target",
                                 "extras" if name == "cross_entropy" else "bad reduction",
                                 "label_smoothing" if name == "cross_entropy" else "weight size")))
    kwargs = {}
    if kind == "target out of range":
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
        return _invalid(name, (x, t), kwargs, ValueError, kind)
    if name == "softmax_focal_loss":
        if kind == "weight size":
            kwargs = {"alpha": kwargs.pop("weight")}
        expected = {"target out of range": IndexError, "negative target": IndexError,
                    "batch mismatch": ValueError, "bad reduction": ValueError,
                    "weight size": RuntimeError, "multi-target": RuntimeError}[kind]
        if kind == "bad reduction" and draw(st.booleans()):
            kwargs, kind, expected = {"gamma": -1.0}, "negative gamma", ValueError
        return _invalid(name, (x, t), kwargs, expected, kind)
    return _invalid(name, (x, t), kwargs, None, kind)


@st.composite
def _invalid_linear_ce(draw):
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
    return _invalid("linear_cross_entropy", (x, w, t), kwargs, None, kind)


@st.composite
def _invalid_binary(draw, name):
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 4)))  # last dim + 1 must not broadcast
    x = draw(uniform(shape, torch.float32, 0.05, 0.95))
    t = draw(uniform(shape, torch.float32))
    kinds = ["size mismatch", "bad reduction"]
    if name == "binary_cross_entropy":
        kinds.append("not a probability")
    if name == "binary_cross_entropy_with_logits":
        kinds += ["weight shape", "pos_weight shape"]
    kind = draw(st.sampled_from(kinds))
    kwargs = {}
    if kind == "size mismatch":
        t = draw(uniform((shape[0], shape[1] + 1), torch.float32))
    elif kind == "bad reduction":
        kwargs["reduction"] = "avg"
    elif kind == "not a probability":
        x.view(-1)[0] = draw(st.sampled_from((1.5, -0.5)))
    elif kind == "weight shape":
        kwargs["weight"] = torch.ones(shape[1] + 1)
    else:
        kwargs["pos_weight"] = torch.ones(shape[1] + 1)
    expected = None
    if name == "sigmoid_focal_loss":
        expected = ValueError
    return _invalid(name, (x, t), kwargs, expected, kind)


@st.composite
def _invalid_regression(draw, name):
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
    kind = draw(st.sampled_from(kinds))
    kwargs = {}
    if kind == "not broadcastable":
        y = draw(values((shape[0], shape[1] + 1), torch.float32))
    elif kind == "bad reduction":
        kwargs["reduction"] = "avg"
    elif kind == "negative beta":
        kwargs["beta"] = -0.5
    elif kind == "non-positive delta":
        kwargs["delta"] = draw(st.sampled_from((0.0, -1.0)))
    else:
        kwargs["weight"] = torch.ones(shape[0] + 1, shape[1])
    return _invalid(name, (x, y), kwargs, None, kind)


@st.composite
def _invalid_margin_ranking(draw):
    n = draw(st.integers(2, 4))  # n + 1 against n must not broadcast
    x1, x2 = draw(values((n,), torch.float32)), draw(values((n,), torch.float32))
    y = torch.ones(n)
    kind = draw(st.sampled_from(("dims differ", "bad reduction", "not broadcastable")))
    kwargs = {}
    if kind == "dims differ":
        y = torch.ones(n, 1)
    elif kind == "not broadcastable":
        x2 = draw(values((n + 1,), torch.float32))
    else:
        kwargs["reduction"] = "avg"
    return _invalid("margin_ranking_loss", (x1, x2, y), kwargs, None, kind)


@st.composite
def _invalid_no_twin_pointwise(draw, name):
    if name == "rank_loss":
        n = draw(st.integers(2, 4))  # n + 1 against n must not broadcast
        args = (torch.ones(n), draw(values((n,), torch.float32)), draw(values((n,), torch.float32)))
        kind = draw(st.sampled_from(("bad reduction", "not broadcastable")))
        if kind == "bad reduction":
            return _invalid(name, args, {"reduction": "avg"}, ValueError, kind)
        return _invalid(name, (torch.ones(n + 1),) + args[1:], {}, RuntimeError, kind)
    # dice_loss
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    probs = draw(values((n, c), torch.float64)).softmax(-1).float()
    label = draw(indices((n, 1), c))
    kind = draw(st.sampled_from(("label shape", "label out of range", "bad reduction")))
    if kind == "label shape":
        return _invalid(name, (probs, label.reshape(-1)), {}, ValueError, kind)
    if kind == "label out of range":
        label[0, 0] = c
        return _invalid(name, (probs, label), {}, IndexError, kind)
    return _invalid(name, (probs, label), {"reduction": "avg"}, ValueError, kind)


@st.composite
def _invalid_ctc(draw, name):
    frames, batch, classes, width = draw(st.integers(2, 6)), draw(st.integers(1, 3)), draw(st.integers(3, 6)), 2
    lp = draw(values((frames, batch, classes), torch.float64)).log_softmax(-1).float()
    targets = draw(indices((batch, width), classes, 1))
    il = torch.full((batch,), frames, dtype=torch.int64)
    tl = torch.full((batch,), width, dtype=torch.int64)
    kind = draw(st.sampled_from(("input length too long", "negative target length",
                                 "negative input length", "blank out of range", "4-d input",
                                 "target length past padding", "lengths size", "bad reduction")))
    kwargs = {}
    if kind == "input length too long":
        il[0] = frames + 1
    elif kind == "negative target length":
        tl[0] = -1
    elif kind == "negative input length":
        il[0] = -1
    elif kind == "blank out of range":
        kwargs["blank"] = classes
    elif kind == "4-d input":
        lp = lp.unsqueeze(0)
    elif kind == "target length past padding":
        tl[0] = width + 1
    elif kind == "lengths size":
        il = torch.full((batch + 1,), frames, dtype=torch.int64)
    else:
        kwargs["reduction"] = "avg"
    expected = None
    if name == "ctc_loss_with_logits":  # fusedloss mirrors torch's ctc_loss checks here
        expected = ValueError if kind == "bad reduction" else RuntimeError
    return _invalid(name, (lp, targets, il, tl), kwargs, expected, kind)


@st.composite
def _invalid_crf(draw, name):
    batch, steps, tags = draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(2, 5))
    emissions = draw(values((batch, steps, tags), torch.float32))
    transitions = draw(values((tags, tags), torch.float32))
    start, end = draw(values((tags,), torch.float32)), draw(values((tags,), torch.float32))
    mask = torch.ones(batch, steps, dtype=torch.bool)
    kinds = ["first step masked", "2-d emissions", "transitions shape", "mask shape"]
    if name == "crf_nll":
        kinds += ["tags shape", "tag out of range", "bad reduction"]
    kind = draw(st.sampled_from(kinds))
    expected = ValueError
    if kind == "first step masked":
        mask[0, 0] = False
    elif kind == "2-d emissions":
        emissions = emissions[0]
    elif kind == "transitions shape":
        transitions = draw(values((tags + 1, tags), torch.float32))
    elif kind == "mask shape":
        mask = torch.ones(batch, steps + 1, dtype=torch.bool)
    tag_index = draw(indices((batch, steps), tags))
    kwargs = {"mask": mask}
    if kind == "tags shape":
        tag_index = tag_index[:, :-1]
    elif kind == "tag out of range":
        tag_index[0, 0] = tags
        expected = IndexError
    elif kind == "bad reduction":
        kwargs["reduction"] = "avg"
    if name == "crf_nll":
        args = (emissions, tag_index, transitions, start, end)
    else:
        args = (emissions, transitions, start, end)
    return _invalid(name, args, kwargs, expected, kind)


@st.composite
def _invalid_hsigmoid(draw):
    n, d, classes = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(2, 6))
    x = draw(values((n, d), torch.float32))
    label = draw(indices((n,), classes))
    weight = draw(values((classes - 1, d), torch.float32))
    kind = draw(st.sampled_from(("label out of range", "one class", "weight rows", "features",
                                 "half a custom tree", "bad reduction")))
    kwargs = {}
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
    return _invalid("hsigmoid_loss", (x, label, classes, weight), kwargs, ValueError, kind)


@st.composite
def _invalid_nce(draw):
    n, d, classes, k = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(1, 3))
    x = draw(values((n, d), torch.float32))
    weight = draw(values((classes, d), torch.float32))
    target = draw(indices((n,), classes))
    noise = draw(indices((n, k), classes))
    log_q = torch.full((classes,), -math.log(classes))
    kind = draw(st.sampled_from(("target out of range", "noise out of range", "noise shape",
                                 "noise_log_probs shape", "bad reduction")))
    kwargs, expected = {}, ValueError
    if kind == "target out of range":
        target[0], expected = classes, IndexError
    elif kind == "noise out of range":
        noise[0, 0], expected = -1, IndexError
    elif kind == "noise shape":
        noise = noise[:, 0]
    elif kind == "noise_log_probs shape":
        log_q = torch.full((classes + 1,), -math.log(classes))
    else:
        kwargs["reduction"] = "avg"
    return _invalid("nce_loss", (x, target, weight, None, noise, log_q), kwargs, expected, kind)


def invalid_calls(name):
    """Strategy of calls of fusedloss.functional.<name> that must raise (`InvalidCall`)."""
    _check_name(name)
    if name in ("cross_entropy", "nll_loss", "softmax_focal_loss"):
        return _invalid_softmax(name)
    if name == "linear_cross_entropy":
        return _invalid_linear_ce()
    if name in ("binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss"):
        return _invalid_binary(name)
    if name in ("smooth_l1_loss", "huber_loss", "l1_loss", "mse_loss"):
        return _invalid_regression(name)
    if name == "margin_ranking_loss":
        return _invalid_margin_ranking()
    if name in ("rank_loss", "dice_loss"):
        return _invalid_no_twin_pointwise(name)
    if name in ("ctc_loss", "ctc_loss_with_logits"):
        return _invalid_ctc(name)
    if name in ("crf_nll", "crf_decode", "crf_marginals"):
        return _invalid_crf(name)
    if name == "hsigmoid_loss":
        return _invalid_hsigmoid()
    return _invalid_nce()
