"""The differential fuzzer: kernels against the float64 reference, forward and backward.

`fuzz()` draws whole valid calls of every loss (hypothesis strategies in
`fusedloss.testing.strategies`), checks each with `compare` (docs/design.md's tolerance rule) and
returns a `Report` with shrunk, runnable reproducers of any failure. `assert_close_to_reference`
checks one call of your own. hypothesis is a test extra: `import fusedloss.testing` works
without it; `fuzz()` and `fusedloss.testing.strategies` raise an ImportError saying so.
"""
from .compare import TOLERANCES, Comparison, assert_close_to_reference, compare, planted_error
from .fuzz import Failure, Report, Row, fuzz, reproducer

__all__ = ["TOLERANCES", "Comparison", "Failure", "Report", "Row", "assert_close_to_reference",
           "compare", "fuzz", "planted_error", "reproducer"]
