"""Triton kernels, one module per loss family, each with the autograd.Function that launches it.

KERNELS maps a loss name (as in fusedloss.reference) to the function that runs its kernel with
the same normalised signature. Importing this package imports triton, so it is only imported
when a call resolves to the 'triton' backend.
"""
from . import crf, cross_entropy, ctc, elementwise, hsigmoid, linear_cross_entropy, nce

KERNELS = {**cross_entropy.KERNELS, **elementwise.KERNELS, **linear_cross_entropy.KERNELS,
           **ctc.KERNELS, **crf.KERNELS, **hsigmoid.KERNELS, **nce.KERNELS}
