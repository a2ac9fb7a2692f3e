"""The one definition of "agrees with the reference" (the tolerance rule of docs/design.md).

A call runs three times: as the user runs it (the backend in force: kernels under CUDA or the
Triton interpreter), through the reference on float64 copies of every floating input (the
truth), and through torch's own eager implementation at the input's own dtype: the
torch.nn.functional twin where there is one, else, for losses whose reference is a plain
composition of torch operations, that composition (the reference run at the input's dtype).
Torch's error is its largest over each output or gradient tensor (flash-attn's three-way rule). An element passes
when its error against the truth is at most max(atol + rtol * |truth|, 2 * torch's error).
Gradients of every floating input that requires grad are compared the same way after a backward
with a random grad_output (never all ones). The figure of merit is the worst ratio
error / allowed over all elements: a call passes when it is at most 1.
"""
import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as torch_F

from .. import _backend, catalog
from .twins import torch_function

# (rtol, atol) for values and for gradients, per input dtype
TOLERANCES = {
    torch.float64: ((1e-7, 1e-9), (1e-7, 1e-9)),
    torch.float32: ((1e-5, 1e-6), (1e-4, 1e-5)),
    torch.float16: ((1e-3, 1e-3), (1e-3, 1e-3)),
    torch.bfloat16: ((1e-2, 1e-2), (1e-2, 1e-2)),
}

# Planted errors (tests of the fuzzer itself): fn_name -> wrappers applied to the candidate only.
_PLANTED = {}


@contextlib.contextmanager
def planted_error(fn_name: str, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """Within the block, the candidate run of `fn_name` (never the reference, never torch) is
    `wrap(fn)(*args, **kwargs)`: a deliberate bug the fuzzer must catch. Nestable."""
    _PLANTED.setdefault(fn_name, []).append(wrap)
    try:
        yield
    finally:
        _PLANTED[fn_name].remove(wrap)
        if not _PLANTED[fn_name]:
            del _PLANTED[fn_name]


def _candidate(fn_name, fn):
    for wrap in _PLANTED.get(fn_name, ()):
        fn = wrap(fn)
    return fn


@dataclasses.dataclass
class Comparison:
    """Outcome of one call: the worst error/allowed ratio and where it was seen."""
    ratio: float
    where: str

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0


def _floating_dtype(args):
    for value in args:
        if torch.is_tensor(value) and value.is_floating_point():
            return value.dtype
    return torch.float32


def _copy(value, dtype=None):
    """A fresh leaf copy of a tensor argument (optionally cast), keeping requires_grad."""
    if not torch.is_tensor(value):
        return value
    copy = value.detach().clone()
    if dtype is not None and copy.is_floating_point():
        copy = copy.to(dtype)
    return copy.requires_grad_(value.requires_grad)


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def run_with_gradients(fn, args, kwargs, grad_seed, dtype=None, grad_output_dtype=torch.float64,
                       strided_grad_output=True):
    """Call fn on fresh copies (floating ones cast to `dtype`), backward a seeded random
    grad_output through the loss output; return (detached outputs, gradients of the inputs that
    require grad, in argument order). grad_output's values are those representable in
    `grad_output_dtype`: every run of one comparison uses the candidate's, so the float64 truth
    differentiates with exactly the grad_output the candidate received. A grad_output of several
    elements comes strided (every other element of a wider tensor), as a backward's often do
    (a sum's is expanded, stride 0): a kernel that indexes it as if contiguous fails here.
    strided_grad_output=False hands it contiguous instead, as a typical training step does."""
    args = [_copy(a, dtype) for a in args]
    kwargs = {k: _copy(v, dtype) for k, v in kwargs.items()}
    leaves = [a for a in list(args) + list(kwargs.values())
              if torch.is_tensor(a) and a.requires_grad]
    outputs = _outputs(fn(*args, **kwargs))
    loss = outputs[0]
    grads = []
    if leaves and torch.is_tensor(loss) and loss.requires_grad:
        generator = torch.Generator().manual_seed(grad_seed)
        grad_output = torch.randn((*loss.shape, 2), generator=generator, dtype=torch.float64) + 0.5
        grad_output = grad_output.to(grad_output_dtype).to(loss.dtype)[..., 0]
        if not strided_grad_output:
            grad_output = grad_output.contiguous()
        grads = torch.autograd.grad(loss, leaves, grad_output, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
    return [o.detach() if torch.is_tensor(o) else o for o in outputs], list(grads)


def _torch_twin(info, kwargs):
    """torch's own implementation of the call (the twin, else a torch composition), or None
    where there is none or the call sets an option only fusedloss has."""
    if any(kwargs.get(k, default) != default for k, default in info.extras.items()):
        return None
    if info.composition is not None:
        return info.composition
    return torch_function(info.twin) if info.twin else None


def _element_ratio(candidate, truth, torch_value, rtol, atol):
    """Worst error/allowed over the elements of one tensor; non-finite truths must match exactly."""
    if candidate.shape != truth.shape:
        return math.inf, f"shape {tuple(candidate.shape)} != reference {tuple(truth.shape)}"
    if not candidate.is_floating_point():
        return (0.0 if torch.equal(candidate, truth.to(candidate.dtype)) else math.inf), "exact values"
    limit = torch.finfo(candidate.dtype).max
    candidate, truth = candidate.double(), truth.double()
    # A truth beyond the dtype's range rounds to +-inf: an infinite candidate of the same sign there
    # is the correctly rounded answer (fp16 sums overflow at 65504 in torch too).
    overflow = torch.isinf(candidate) & (truth.abs() > limit) & (torch.sign(candidate) == torch.sign(truth))
    truth = torch.where(overflow, candidate, truth)
    finite = torch.isfinite(truth)
    same_nonfinite = (candidate == truth) | (torch.isnan(candidate) & torch.isnan(truth))
    if not bool(same_nonfinite[~finite].all()):
        return math.inf, "non-finite values differ from the reference"
    allowed = atol + rtol * truth.abs()
    if torch_value is not None and torch_value.shape == truth.shape and truth.numel():
        # torch's error is taken over the whole tensor, as flash-attn's three-way tests do: an
        # element where torch happens to round luckily must not set a bar no rounding can meet
        torch_error = torch.nan_to_num((torch_value.double() - truth).abs(), nan=0.0, posinf=0.0)
        allowed = torch.clamp(allowed, min=2 * float(torch_error.max()))
    error = (candidate - truth).abs()
    ratio = torch.where(finite, error / allowed, torch.zeros_like(error))
    ratio = torch.nan_to_num(ratio, nan=math.inf)
    if ratio.numel() == 0:
        return 0.0, "empty"
    index = int(ratio.flatten().argmax())
    return float(ratio.flatten()[index]), f"element {index}: {float(candidate.flatten()[index])!r} vs reference {float(truth.flatten()[index])!r}"


def compare(fn_name: str, *args: object, grad_seed: int = 0, **kwargs: object) -> Comparison:
    """Run `fusedloss.functional.<fn_name>(*args, **kwargs)` on the backend in force and against
    the float64 reference; return the worst error/allowed ratio over values and gradients."""
    info = catalog.get(fn_name)
    fn = info.function
    dtype = _floating_dtype(list(args) + list(kwargs.values()))
    value_tol, grad_tol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])

    runs = dict(grad_seed=grad_seed, grad_output_dtype=dtype)
    candidate_out, candidate_grads = run_with_gradients(_candidate(fn_name, fn), args, kwargs, **runs)
    with _backend.use_backend("reference"):
        truth_out, truth_grads = run_with_gradients(fn, args, kwargs, dtype=torch.float64, **runs)
    torch_out, torch_grads = [None] * len(truth_out), [None] * len(truth_grads)
    twin = _torch_twin(info, kwargs)
    if twin is not None:
        try:
            # the extras are all at their defaults here: torch does not know their names
            twin_kwargs = {k: v for k, v in kwargs.items() if k not in info.extras}
            torch_out, torch_grads = run_with_gradients(twin, args, twin_kwargs, **runs)
            if info.twin_gradient_differs:
                torch_grads = [None] * len(truth_grads)
        except (RuntimeError, NotImplementedError):  # e.g. a dtype torch's CPU kernels lack
            pass
    elif info.eager_reference and dtype != torch.float64:
        with _backend.use_backend("reference"):
            torch_out, torch_grads = run_with_gradients(fn, args, kwargs, **runs)

    worst = Comparison(0.0, "")
    groups = [("output", candidate_out, truth_out, torch_out, value_tol),
              ("grad", candidate_grads, truth_grads, torch_grads, grad_tol)]
    for label, candidates, truths, torch_values, (rtol, atol) in groups:
        if len(candidates) != len(truths):
            return Comparison(math.inf, f"{label}: {len(candidates)} tensors vs reference {len(truths)}")
        for i, (cand, truth) in enumerate(zip(candidates, truths)):
            torch_value = torch_values[i] if i < len(torch_values) else None
            if not torch.is_tensor(truth):
                ratio, where = (0.0 if cand == truth else math.inf), "non-tensor output"
            else:
                ratio, where = _element_ratio(cand, truth, torch_value, rtol, atol)
            if ratio > worst.ratio or (math.isinf(ratio) and not worst.where):
                worst = Comparison(ratio, f"{label} {i}, {where}")
    return worst


def assert_close_to_reference(fn_name: str, *args: object, **kwargs: object) -> Comparison:
    """Raise AssertionError unless fusedloss.functional.<fn_name> on these arguments agrees with
    the float64 reference within the tolerance rule of docs/design.md (values and gradients)."""
    result = compare(fn_name, *args, **kwargs)
    if not result.ok:
        raise AssertionError(f"{fn_name}: error is {result.ratio:.3g} x the allowed ({result.where})")
    return result
