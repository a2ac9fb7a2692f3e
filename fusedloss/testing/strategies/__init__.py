"""Hypothesis strategies that generate whole calls of every fusedloss function, one module per
loss family (the catalog names each loss's strategies; `_common` holds the building blocks).

`calls(name)` draws valid calls of `fusedloss.functional.<name>` (a `Call`: the function name,
positional and keyword arguments, all CPU tensors), covering shapes (1-element and empty batches,
odd vocabularies, N-d inputs, a few rows just past a 1024-column kernel block), every option and
reduction, the four float dtypes (and the integer and complex operands torch accepts: integer
targets and margin-ranking scores, complex L1 pairs), K-dimensional linear cross entropy, and
extreme but legal values (logits of +-1e4 and -inf, probabilities of exactly 0 and 1,
all-ignored batches, soft labels, CTC lengths at their limits, CRF masks). `invalid_calls(name)`
draws calls that must raise (`InvalidCall`), mixed devices and dtypes torch refuses among them.

Where a gradient is undefined or discontinuous at the drawn values (BCE at p = 0 or 1, a margin
ranking hinge exactly at its kink, a mean over zero weight, an infeasible CTC alignment without
zero_infinity) the call is generated with no tensor requiring grad, so only values are compared
there and the comparison stays meaningful.

hypothesis is a test extra: importing this package without it raises an ImportError that says so.
"""
try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - exercised only without the test extra
    raise ImportError("fusedloss.testing's strategies and fuzz() need hypothesis, a test extra: "
                      "pip install 'fusedloss[test]' (or pip install hypothesis)") from error

from ... import catalog
from ._common import FLOAT_DTYPES, Call, InvalidCall

__all__ = ["FLOAT_DTYPES", "Call", "InvalidCall", "calls", "invalid_calls"]


def calls(name, dtypes=FLOAT_DTYPES):
    """Strategy of valid calls of fusedloss.functional.<name> with floating inputs of `dtypes`
    (float32 first: minimal failures shrink towards it)."""
    return st.sampled_from(tuple(dtypes)).flatmap(catalog.get(name).valid_calls)


def invalid_calls(name):
    """Strategy of calls of fusedloss.functional.<name> that must raise (`InvalidCall`)."""
    return catalog.get(name).invalid_calls()
