"""Placeholder until the crf kernels land."""
KERNELS = {}
