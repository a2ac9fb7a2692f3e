"""Placeholder until the hsigmoid kernel lands."""
KERNELS = {}
