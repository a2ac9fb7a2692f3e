"""Paddle's hierarchical sigmoid: a sum of binary logistic losses along a class's tree path.

Default tree (Paddle's SimpleCode): a complete binary tree with num_classes - 1 inner nodes. Class
c gets code = c + num_classes; its path has bit_length(code) - 1 steps, step j visits inner node
(code >> (j + 1)) - 1 with target bit (code >> j) & 1. A custom tree gives each sample's inner
nodes and bits directly (path_table, path_code, padded with -1).
"""
import torch

from .. import _args
from .._reduction import reduce


def default_paths(label, num_classes):
    """(path_table, path_code), both (N, L) padded with -1, of the default tree for `label`."""
    max_length = (2 * num_classes - 1).bit_length() - 1  # the longest code is 2 * num_classes - 1
    step = torch.arange(max_length, device=label.device)
    code = label.long().reshape(-1, 1) + num_classes
    on_path = (code >> (step + 1)) > 0  # step j exists while code has a bit above bit j
    path_table = torch.where(on_path, (code >> (step + 1)) - 1, -1)
    path_code = torch.where(on_path, (code >> step) & 1, -1)
    return path_table, path_code


def hsigmoid_loss(input, label, num_classes, weight, bias=None, path_table=None, path_code=None,
                  reduction="mean", queued_index_error=None):
    """Per sample sum over its path nodes of softplus(z) - bit * z, z = input . weight[node] + bias[node].

    'none' gives (N,) (Paddle returns (N, 1)). Paddle clips z to [-40, 40] first; this does not,
    which only differs where |z| > 40. queued_index_error: where functional.py left the range
    check of the labels (default tree) or of path_table to the call (CUDA), its message, queued
    on the device here.
    """
    if queued_index_error is not None:
        if path_table is None:
            _args.queue_within(label, 0, num_classes - 1, queued_index_error)
        else:
            _args.queue_within(path_table, -1, weight.shape[0] - 1, queued_index_error)
    if path_table is None:
        path_table, path_code = default_paths(label, num_classes)
    on_path = path_table >= 0
    node = path_table.long().clamp(min=0)  # padding reads node 0, masked out below
    bit = path_code.clamp(min=0).to(input.dtype)
    z = (input.unsqueeze(1) * weight[node]).sum(-1)
    if bias is not None:
        z = z + bias.reshape(-1)[node]
    per_node = torch.logaddexp(z, torch.zeros_like(z)) - bit * z  # softplus without its threshold
    return reduce((per_node * on_path).sum(1), reduction)
