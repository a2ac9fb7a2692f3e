"""Placeholder until the ctc kernels land."""
KERNELS = {}
