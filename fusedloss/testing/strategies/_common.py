"""What every family's strategies build on: the drawn `Call`, seeded tensors, reductions.

Values come from a seeded torch generator whose seed, scale and injected special values are
drawn by hypothesis, so shrinking reduces shapes, options and values alike while a drawn call
stays cheap to generate even with 1000+ columns.
"""
import dataclasses
import math

import torch
from hypothesis import strategies as st


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
    differentiable = moved.is_floating_point() or moved.is_complex()
    return moved.requires_grad_(value.requires_grad) if differentiable else moved


# --- building blocks ------------------------------------------------------------------------

# float32 first: hypothesis shrinks towards the first choice, so a minimal failure is fp32 when
# the dtype does not matter.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")
LOGIT_SPECIALS = (1e4, -1e4, 0.0, 30.0, -30.0)
# Smallest probability with a meaningful BCE gradient per dtype (log clamps and 1 - p rounding).
PROB_FLOOR = {torch.float32: 1e-5, torch.float64: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


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
    differentiable = tensor.is_floating_point() or tensor.is_complex()
    return tensor.requires_grad_(bool(on)) if differentiable else tensor


# The device mixed with the call's own in invalid calls: meta tensors exist on every machine and
# torch refuses to mix them with real ones, as it refuses to mix CUDA and CPU tensors.
OTHER_DEVICE = "meta"


def on_other_device(tensor):
    return tensor.to(OTHER_DEVICE)


def as_integers(tensor):
    """The values rounded to int64 (integer operands, which torch promotes)."""
    return tensor.detach().round().to(torch.int64)


def complex_dtype(dtype):
    """The complex dtype of a float dtype's width: complex128 for float64, else complex64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def values_only(call, why):
    """The call with no tensor requiring grad: the gradient is undefined or discontinuous there."""
    for value in list(call.args) + list(call.kwargs.values()):
        if torch.is_tensor(value):
            value.requires_grad_(False)
    call.note = (call.note + "; " if call.note else "") + f"values only: {why}"
    return call


def invalid(name, args, kwargs, expected, note):
    return InvalidCall(name, tuple(args), dict(kwargs), note, expected)


@st.composite
def elementwise_shapes(draw, max_elements=48, max_dims=3):
    dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=max_dims))
    while math.prod(dims) > max_elements:
        dims[dims.index(max(dims))] -= 1
    if draw(st.integers(0, 9)) == 9:  # one flat case past a 1024 elementwise block
        return (draw(st.integers(1025, 1100)),)
    return tuple(dims)
