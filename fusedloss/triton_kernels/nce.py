"""Placeholder until the nce kernel lands."""
KERNELS = {}
