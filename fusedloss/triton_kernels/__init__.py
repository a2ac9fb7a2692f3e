"""Triton kernels, one module per loss family (fusedloss.catalog's families), each with the
autograd.Function that launches it; modules with a leading underscore are shared by families
(_elementwise: the generic elementwise kernel; _gathered_logistic: hsigmoid's and NCE's engine;
_math: the jit math; _common: launch sizes and dtypes).

KERNELS maps a loss name (as in fusedloss.reference) to the function that runs its kernel with
the same normalised signature. Importing this package imports triton, so it is only imported
when a call resolves to the 'triton' backend.
"""
import torch

from .._backend import interpreting
from . import _interpreter_compat

if interpreting():
    _interpreter_compat.install()

from . import (binary, crf, cross_entropy, ctc, dice, hsigmoid, linear_cross_entropy, nce,  # noqa: E402
               pointwise, ranking)

# Each kernel function runs outside torch.compile's tracing: under torch.compile a fused loss is
# a graph break, run eagerly, rather than a trace through Triton's launcher (which fails under
# the interpreter and is unverified on GPUs). Wrapped here, not in _dispatch, because
# torch.compiler.disable imports torch._dynamo, which imports triton: that must not happen
# before `python -m fusedloss check` has decided whether to switch the interpreter on.
# A torch.library registration that keeps the kernels inside compiled graphs is future work.
KERNELS = {name: torch.compiler.disable(fn) for family in (
    cross_entropy, linear_cross_entropy, binary, pointwise, ranking, dice, ctc, crf, hsigmoid, nce)
    for name, fn in family.KERNELS.items()}
