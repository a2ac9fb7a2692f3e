"""The kernels as torch custom ops, which is how a fused loss stays inside a torch.compile graph.

Dynamo cannot trace a Triton launcher (nor the interpreter's), so while compiling the
dispatcher calls `fusedloss::<loss>` instead of the kernel: an opaque op that AOT autograd and
Inductor place in the graph (no graph break, CUDA-graph capturable) and that runs the very
kernel function eagerly on the real tensors when the graph runs. One op per name of
triton_kernels.KERNELS, all of the same schema, built from the normalised call:

    fusedloss::<loss>(Tensor[] tensors, float[] floats, str layout) -> Tensor[]

`tensors` and `floats` are the call's tensors and floats in order; `layout` is the repr of
everything else, constants dynamo folds into the graph: where each value goes, the other
constants (ints, bools, None, strings), which tensors want a gradient, the path below and
whether autocast was on (the op runs the kernel under the same autocast state, wherever the
graph runs it). A decline (KernelDeclined) inside the op runs the reference there. The layout
also carries fusedloss's version: torch's on-disk compile caches (AOT autograd, Inductor) key a
graph by its forward and hand back the backward compiled with it, so a graph compiled by another
release of fusedloss, whose ops may differentiate differently, must not match.

Autograd (register_autograd), two paths:
- fused, when the loss is reduced ('mean'/'sum', the training case) and a gradient is wanted:
  the op returns the loss, its extras (lse) and d loss / d tensors for grad_output = 1, which
  the kernel's forward sweep computes anyway; the backward is grad_output * gradient, a torch
  mul. Bytes moved: eager's one sweep, plus one read and one write of each gradient, at every
  grad_output, 1 included (where eager's backward moves nothing). Under Inductor that is one
  fused kernel writing each product into its saved gradient's own buffer (a saved tensor the
  backward alone uses is donated to it: no gradient-sized allocation), or nothing extra where
  Inductor fuses the mul into a pointwise consumer of the gradient; under aot_eager the mul
  allocates a new gradient. An in-place scale op (a custom op mutating the saved gradient, run
  by the shared kernel that returns at once at grad_output 1) would not move less: to AOT
  autograd the saved gradient is an input of the backward graph, functionalization turns the
  mutation into auto_functionalized, and re-inplacing keeps a mutated graph input's clone when
  no copy back into it follows (none does for a saved tensor), so the gradient is copied before
  the op runs: into a new buffer under aot_eager, into its own donated buffer under Inductor
  (still a read and a write), on torch 2.11 and 2.13 alike; and being opaque, it would stop
  Inductor fusing the scale into the gradient's consumers.
- recomputed, otherwise (reduction 'none', crf_marginals): the forward op runs the kernel
  without gradients, and `fusedloss::<loss>_backward(tensors, floats, layout, grad_outputs)`
  runs it again with them and applies the given grad_outputs: a second forward sweep's reads
  on top of eager's traffic, in exchange for keeping nothing but the inputs.
Both costs follow from the construction (tests/test_compile.py checks the Inductor backward's
code); benchmarks/traffic.py counts eager calls only.

The fake implementation (shapes and dtypes for tracing) is the reference run on the fake
tensors: it is plain torch, its outputs have the kernels' shapes and dtypes, and every
reference is free of data-dependent shapes once functional.py has normalised the call.
inplace_backward is not forwarded (an op may not overwrite an input it does not declare as
mutated): under compile the loss keeps its logits. Double backward and forward-mode AD are not
available under compile.
"""
import ast
import contextlib
import functools

import torch

from . import __version__, _dispatch
from .triton_kernels import KERNELS
from .triton_kernels._declined import KernelDeclined

_TENSOR, _FLOAT = "t", "f"  # the layout's entries for values carried in `tensors` and `floats`


class _Layout:
    """A parsed layout string: how to rebuild the normalised call, and the call's options."""

    def __init__(self, layout):
        (_version, self.num_args, self.keys, self.entries, self.wanted, self.fused,
         self.autocast) = ast.literal_eval(layout)

    def rebuild(self, tensors, floats):
        """(args, kwargs) of the normalised call around `tensors` and `floats`."""
        tensors, floats = iter(tensors), iter(floats)
        values = [next(tensors) if entry == _TENSOR else next(floats) if entry == _FLOAT
                  else entry[0] for entry in self.entries]
        return tuple(values[:self.num_args]), dict(zip(self.keys, values[self.num_args:]))


@functools.lru_cache(maxsize=None)
def _parsed(layout):
    return _Layout(layout)


def layout_of(args, kwargs, wanted, fused, autocast):
    """The layout string of a normalised call (traceable: dynamo folds it to a constant)."""
    entries = tuple(_TENSOR if isinstance(value, torch.Tensor) else
                    _FLOAT if isinstance(value, float) else (value,)
                    for value in (*args, *kwargs.values()))
    return repr((__version__, len(args), tuple(kwargs), entries, tuple(wanted), fused, autocast))


@contextlib.contextmanager
def _autograd_recorded():
    """A custom op's implementation runs below torch's Autograd dispatch key, where nothing is
    recorded; the kernel function is an autograd.Function whose gradients are wanted here, so
    the autograd keys are dispatched again inside (the rest of the thread's state kept)."""
    keys = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (keys.AutogradFunctionality, keys.AutogradOther, keys.AutogradNestedTensor):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        yield


def _run(name, layout, tensors, floats):
    """The kernel's outputs (the reference's where the kernel declines), as a tuple."""
    args, kwargs = layout.rebuild(tensors, floats)
    try:
        outputs = KERNELS[name](*args, **kwargs)
    except KernelDeclined:
        outputs = _dispatch._reference(name, tensors[0].device, args, kwargs)
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _stand_ins(layout, tensors):
    return [t.detach().requires_grad_(w) for t, w in zip(tensors, layout.wanted)]


def _gradients(outputs, grad_outputs, stand_ins, layout):
    """d outputs / d (wanted stand-ins) applied to grad_outputs; zeros where none flows."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
    wanted = [s for s, w in zip(stand_ins, layout.wanted) if w]
    grads = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                allow_unused=True) if pairs else [None] * len(wanted)
    return [torch.zeros_like(s) if g is None else g.contiguous() for g, s in zip(grads, wanted)]


def _forward(name, tensors, floats, layout):
    layout = _parsed(layout)
    with _autograd_recorded(), torch.autocast(tensors[0].device.type, enabled=layout.autocast):
        if not layout.fused:
            with torch.no_grad():
                return [o.contiguous() for o in _run(name, layout, tensors, floats)]
        stand_ins = _stand_ins(layout, tensors)
        with torch.enable_grad():
            outputs = _run(name, layout, stand_ins, floats)
            grads = _gradients(outputs[:1], [torch.ones_like(outputs[0])], stand_ins, layout)
    return [o.detach().contiguous() for o in outputs] + grads


def _backward(name, tensors, floats, layout, grad_outputs):
    layout = _parsed(layout)
    with _autograd_recorded(), torch.autocast(tensors[0].device.type, enabled=layout.autocast):
        stand_ins = _stand_ins(layout, tensors)
        with torch.enable_grad():
            outputs = _run(name, layout, stand_ins, floats)
            return _gradients(outputs, grad_outputs, stand_ins, layout)


def _empty_gradients(layout, tensors):
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device)
            for t, w in zip(tensors, layout.wanted) if w]


def _fake_forward(name, tensors, floats, layout):
    layout = _parsed(layout)
    args, kwargs = layout.rebuild(tensors, floats)
    with torch.no_grad(), torch.autocast(tensors[0].device.type, enabled=layout.autocast):
        outputs = _dispatch._reference(name, tensors[0].device, args, kwargs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grads = _empty_gradients(layout, tensors) if layout.fused else []
    return [o.contiguous() for o in outputs] + grads


def _fake_backward(name, tensors, floats, layout, grad_outputs):
    return _empty_gradients(_parsed(layout), tensors)


def _scaled(gradient, grad_output):
    """grad_output * gradient, multiplied in the wider dtype and rounded once into the
    gradient's (as the kernels' own backward scales)."""
    return (gradient * grad_output).to(gradient.dtype)


def _register(name):
    """fusedloss::<name> and fusedloss::<name>_backward, with their fakes and autograd."""
    def forward(tensors: list[torch.Tensor], floats: list[float],
                layout: str) -> list[torch.Tensor]:
        return _forward(name, tensors, floats, layout)

    def backward(tensors: list[torch.Tensor], floats: list[float], layout: str,
                 grad_outputs: list[torch.Tensor | None]) -> list[torch.Tensor]:
        return _backward(name, tensors, floats, layout, grad_outputs)

    forward_op = torch.library.custom_op(f"fusedloss::{name}", forward, mutates_args=())
    backward_op = torch.library.custom_op(f"fusedloss::{name}_backward", backward, mutates_args=())
    forward_op.register_fake(functools.partial(_fake_forward, name))
    backward_op.register_fake(functools.partial(_fake_backward, name))

    def setup_context(ctx, inputs, output):
        tensors, floats, layout = inputs
        parsed = _parsed(layout)
        ctx.floats, ctx.layout = floats, layout
        if parsed.fused:
            ctx.save_for_backward(*output[len(output) - sum(parsed.wanted):])
        else:
            ctx.save_for_backward(*tensors)

    def differentiated(ctx, grad_outputs):
        layout = _parsed(ctx.layout)
        saved = list(ctx.saved_tensors)
        if layout.fused:  # the loss is the one differentiable output; the rest are extras
            grads = iter([_scaled(g, grad_outputs[0]) for g in saved])
        else:
            grads = iter(backward_op(saved, ctx.floats, ctx.layout, list(grad_outputs)))
        # torch's tensor-list support takes an empty list for a list of tensors (its gradient a
        # list) and a list of floats for one non-differentiable value
        floats_grad = [] if not ctx.floats else None
        return ([next(grads) if w else None for w in layout.wanted], floats_grad, None)

    forward_op.register_autograd(differentiated, setup_context=setup_context)
    return forward_op


OPS = {name: _register(name) for name in KERNELS}


def call(name, args, kwargs):
    """Loss `name` through its op: the normalised call's outputs, as the kernel returns them."""
    kwargs = {**kwargs, "inplace_backward": False} if "inplace_backward" in kwargs else kwargs
    values = (*args, *kwargs.values())
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    grad_enabled = torch.is_grad_enabled()
    wanted = [grad_enabled and t.requires_grad and t.is_floating_point() for t in tensors]
    fused = any(wanted) and kwargs.get("reduction", "none") != "none"
    autocast = torch.is_autocast_enabled(tensors[0].device.type)
    layout = layout_of(args, kwargs, wanted, fused, autocast)
    outputs = OPS[name](tensors, [v for v in values if isinstance(v, float)], layout)
    if fused:
        outputs = outputs[:len(outputs) - sum(wanted)]
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
