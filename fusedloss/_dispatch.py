"""Routes a normalised call to the reference or to the Triton kernel of the same name.

Both backends expose the same function names with the same normalised signatures (the argument
handling in functional.py has already run). A loss without a kernel yet runs its reference under
every backend; `has_kernel` says which do, for the README table and the fuzzer. A call in
dtypes the kernels do not compute in (`_args.kernels_take`: complex, or an integer input) runs
the reference too, whose torch operations promote as torch does.

Under torch.autocast both backends return a 16-bit loss in float32 (torch's policy for its
losses; _autocast.py has the rule and why): the kernels read the 16-bit inputs
as they are and return float32 themselves; the reference, like torch, runs on float32 copies
with autocast off inside.

A kernel's backward is fused and first-order: it scales the gradient its forward wrote.
`_ExactBeyondFirstOrder` wraps each kernel call that autograd records so that what the fused
backward cannot give is computed through the reference instead, from the same inputs: a
backward asked to build a graph (`create_graph=True`: double backward, Hessian-vector
products), a second backward through a retained graph (the first one scaled the fused
gradient in place), a backward of batched grad_outputs (autograd's vmap: is_grads_batched,
which no kernel launch takes), and forward-mode AD. The first plain backward stays the fused one:
the kernel's sweep, captured by this Function rather than wrapped in a second one
(_precomputed_gradient.SweepCapture), or the kernel's own graph, recorded on stand-ins. The
inputs are kept for that until the graph is freed, as torch's own losses keep theirs (or their
log-softmax); `inplace_backward=True`, whose logits hold the gradient, keeps nothing and
refuses a second backward (triton_kernels/_precomputed_gradient.py).

While torch.compile traces a call, the kernel is reached through its custom op (_ops.py has
the design), which keeps the loss inside the graph; the reference backend is plain torch that
dynamo traces as it is.

Under torch.func's transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap: per-sample
gradients, functional training loops) the call runs the reference, whose torch operations every
transform differentiates and batches as it does torch's own losses: a kernel launch takes plain
tensors (vmap's batched tensors have no storage to point it at), and the fused backward is
autograd's, not a transform's. The values are the reference's, which the kernels are tested
against; the speed is that of the torch composition.
"""
import dataclasses

import torch
from torch.autograd import forward_ad

from . import _args, _backend, reference


def __getattr__(name):
    # KernelDeclined lives beside the kernels (triton_kernels/_declined.py, which they raise
    # without importing this module); re-exported lazily, as importing that package imports triton
    if name == "KernelDeclined":
        from .triton_kernels._declined import KernelDeclined
        return KernelDeclined
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_kernels = None  # triton_kernels.KERNELS once a call has needed it (importing it imports triton)


def _kernel_table():
    global _kernels
    if _kernels is None:
        from .triton_kernels import KERNELS
        _kernels = KERNELS
    return _kernels


def has_kernel(name):
    return name in _kernel_table()


def _float32_if_16_bit(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def _reference(name, device, args, kwargs):
    function = getattr(reference, name)
    device_type = torch.device(device).type
    if not torch.is_autocast_enabled(device_type):
        return function(*args, **kwargs)
    with torch.autocast(device_type, enabled=False):
        return function(*map(_float32_if_16_bit, args),
                        **{key: _float32_if_16_bit(value) for key, value in kwargs.items()})


@dataclasses.dataclass(frozen=True)
class _Call:
    """A normalised call with its tensors taken out: `with_tensors` puts (other) tensors back."""
    name: str
    device: torch.device
    args: tuple
    kwargs: dict

    @property
    def tensors(self):
        return [v for v in (*self.args, *self.kwargs.values()) if isinstance(v, torch.Tensor)]

    def with_tensors(self, tensors):
        """(args, kwargs) with the call's tensors replaced, in order, by `tensors`."""
        replacements = iter(tensors)
        values = [next(replacements) if isinstance(v, torch.Tensor) else v
                  for v in (*self.args, *self.kwargs.values())]
        return tuple(values[:len(self.args)]), dict(zip(self.kwargs, values[len(self.args):]))

    def reference(self, tensors):
        """The reference's outputs on `tensors` instead of the call's, as a tuple."""
        args, kwargs = self.with_tensors(tensors)
        outputs = _reference(self.name, self.device, args, kwargs)
        return _as_tuple(outputs)


def _as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


class _ExactBeyondFirstOrder(torch.autograd.Function):
    """apply(kernel, call, recorded(call.tensors), *call.tensors): the kernel's outputs, its fused backward once, the
    reference's derivatives for everything else (module header)."""

    @staticmethod
    def forward(ctx, kernel, call, recorded, *tensors):
        # the kernel runs on stand-ins of the inputs autograd follows: a kernel whose forward
        # writes the gradients hands its sweep to this Function (SweepCapture), any other
        # records its own graph from them; the first backward runs either (the fused backward)
        from .triton_kernels._precomputed_gradient import capturing
        with torch.enable_grad():
            stand_ins = [t.detach().requires_grad_() if r else t for t, r in zip(tensors, recorded)]
            args, kwargs = call.with_tensors(stand_ins)
            with capturing(stand_ins) as capture:
                outputs = _as_tuple(kernel(*args, **kwargs))
        ctx.call = call
        if capture.sweep is not None:
            if len(outputs) != len(capture.sweep.outputs) or any(
                    o is not s for o, s in zip(outputs, capture.sweep.outputs)):
                raise RuntimeError(f"fusedloss internal error: the {call.name} kernel changed "
                                   "the outputs of its captured sweep")
            ctx.fused = capture
            ctx.differentiable = [True] + [False] * (len(outputs) - 1)  # the loss; its extras not
        else:
            ctx.fused = (outputs, stand_ins)
            ctx.differentiable = [o.requires_grad for o in outputs]
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        returned = [o.detach() for o in outputs]
        ctx.mark_non_differentiable(*[o for o, d in zip(returned, ctx.differentiable) if not d])
        return returned[0] if len(returned) == 1 else tuple(returned)

    @staticmethod
    def backward(ctx, *grad_outputs):
        wanted = ctx.needs_input_grad[3:]
        pairs = [(i, g) for i, (g, d) in enumerate(zip(grad_outputs, ctx.differentiable))
                 if d and g is not None]
        fused, ctx.fused = ctx.fused, None  # its buffers are scaled in place: used once
        if fused is not None and not torch.is_grad_enabled() and not _args.transformed(*grad_outputs):
            if not isinstance(fused, tuple):  # the captured sweep: the loss's grad_output alone
                grads = fused.gradients(pairs[0][1]) if pairs else [None] * len(wanted)
                return (None, None, None, *[g if w else None for g, w in zip(grads, wanted)])
            outputs, inputs = fused
        else:  # a graph of the backward wanted, a second backward, or a backward under vmap
            # (batched grad_outputs: is_grads_batched, jacobian(vectorize=True)): the reference's
            create_graph = torch.is_grad_enabled()
            inputs = [t if create_graph else t.detach().requires_grad_(w)
                      for t, w in zip(ctx.saved_tensors, wanted)]
            with torch.enable_grad():
                outputs = ctx.call.reference(inputs)
        differentiate = [t for t, w in zip(inputs, wanted) if w]
        grads = iter(torch.autograd.grad([outputs[i] for i, _ in pairs], differentiate,
                                         [g for _, g in pairs], allow_unused=True,
                                         create_graph=torch.is_grad_enabled()) if pairs else ())
        return (None, None, None, *[next(grads, None) if w else None for w in wanted])

    @staticmethod
    def jvp(ctx, unused_kernel, unused_call, unused_recorded, *tangents):
        # J t through the reference by reverse mode twice (forward mode cannot nest here): with
        # u a free cotangent, v(u) = J^T u is linear in u, and J t = d(v . t) / du
        moving = [i for i, t in enumerate(tangents) if t is not None]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(i in moving) for i, t in enumerate(ctx.saved_tensors)]
            outputs = [o for o, d in zip(ctx.call.reference(inputs), ctx.differentiable) if d]
            cotangents = [torch.zeros_like(o, requires_grad=True) for o in outputs]
            vjps = torch.autograd.grad(outputs, [inputs[i] for i in moving], cotangents,
                                       create_graph=True, allow_unused=True)
            pairs = [(v, tangents[i]) for v, i in zip(vjps, moving) if v is not None]
            jvps = torch.autograd.grad([v for v, _ in pairs], cotangents, [t for _, t in pairs],
                                       allow_unused=True) if pairs else [None] * len(outputs)
        # a NaN value has a NaN tangent, as in torch's formulas: a 'mean' over nothing is 0/0 in
        # value and in tangent there, where J t (a sum over no elements) would say 0
        jvps = iter(torch.where(o.isnan(), o, 0 if j is None else j).detach()
                    for o, j in zip(outputs, jvps))
        result = [next(jvps) if d else None for d in ctx.differentiable]
        return result[0] if len(result) == 1 else tuple(result)


def kernel_node(output):
    """What runs the fused backward of the kernel that computed `output`: the SweepCapture of a
    kernel whose forward wrote the gradients, else the kernel's autograd node (the node itself
    for a call autograd does not wrap). Which implementation ran, for tests."""
    node = output.grad_fn
    if getattr(node, "_forward_cls", None) is _ExactBeyondFirstOrder and node.fused is not None:
        return node.fused if not isinstance(node.fused, tuple) else node.fused[0][0].grad_fn
    return node


def _recorded(tensors):
    """Per tensor: whether autograd (reverse or forward mode) follows it through the call."""
    reverse = torch.is_grad_enabled()
    forward = forward_ad._current_level >= 0
    return [t.is_floating_point() and ((reverse and t.requires_grad) or
                                       (forward and forward_ad.unpack_dual(t).tangent is not None))
            for t in tensors]


def call(name, device, *args, **kwargs):
    """Run loss `name` on the backend chosen for tensors on `device`."""
    # torch.func's transforms take the reference (module header), compiled or not
    if (_backend.resolve(device) == "triton" and _args.kernels_take([*args, *kwargs.values()])
            and not torch._C._are_functorch_transforms_active()):
        if torch.compiler.is_compiling():
            # registers the ops on first use (torch.compile imports triton); _ops' own table,
            # not _kernel_table, whose first fill inside a trace would make dynamo recompile
            from . import _ops
            if name in _ops.OPS:
                return _ops.call(name, args, kwargs)
            return _reference(name, device, args, kwargs)
        kernel = _kernel_table().get(name)
        if kernel is not None:
            try:
                normalised = _Call(name, torch.device(device), args, kwargs)
                tensors = normalised.tensors
                recorded = _recorded(tensors)
                if kwargs.get("inplace_backward") or not any(recorded):
                    return kernel(*args, **kwargs)
                return _ExactBeyondFirstOrder.apply(kernel, normalised, recorded, *tensors)
            except __getattr__("KernelDeclined"):  # the kernel cannot take it: the reference runs
                pass
    return _reference(name, device, args, kwargs)
