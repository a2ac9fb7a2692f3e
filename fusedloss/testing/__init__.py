"""The differential fuzzer: kernels against the float64 reference, forward and backward."""
from .compare import TOLERANCES, Comparison, assert_close_to_reference, compare

__all__ = ["TOLERANCES", "Comparison", "assert_close_to_reference", "compare"]
