"""Triton kernels, one module per loss family (fusedloss.catalog's families), each with the
autograd.Function that launches it; modules with a leading underscore are shared by families
(_elementwise: the generic elementwise kernel; _gathered_logistic: hsigmoid's and NCE's engine;
_math: the jit math; _common: launch sizes and dtypes).

KERNELS maps a loss name (as in fusedloss.reference) to the function that runs its kernel with
the same normalised signature. Importing this package imports triton, so it is only imported
when a call resolves to the 'triton' backend. Under torch.compile the dispatcher reaches these
functions through the custom ops of fusedloss/_ops.py.
"""
from .._backend import interpreting
from . import _interpreter_compat

if interpreting():
    _interpreter_compat.install()

from . import (binary, crf, cross_entropy, ctc, dice, hsigmoid, linear_cross_entropy, nce,  # noqa: E402
               pointwise, ranking)

KERNELS = {name: fn for family in (
    cross_entropy, linear_cross_entropy, binary, pointwise, ranking, dice, ctc, crf, hsigmoid, nce)
    for name, fn in family.KERNELS.items()}
