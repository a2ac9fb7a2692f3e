"""Hierarchical sigmoid (Paddle's hsigmoid) on the gathered-row logistic engine.

A sample visits the inner nodes on its class's tree path, with the path code's bit as the
target of each node's logistic cost. The default tree's (N, ceil(log2 C)) path table and codes
are built with torch integer ops here (Paddle's code = c + C scheme); a custom tree's are used
as given. The kernels, their passes and what is kept are _gathered_logistic.py's (its header).
"""
import torch

from ._gathered_logistic import gathered_logistic


def _default_tree(label, num_classes):
    """Paddle's default complete binary tree: (path_table, path_code) (N, L), padded with -1."""
    length = (2 * num_classes - 1).bit_length() - 1  # the longest code is 2 * num_classes - 1
    step = torch.arange(length, device=label.device)
    code = label.reshape(-1, 1) + num_classes
    parent = code >> (step + 1)  # step j exists while the code has a bit above bit j
    return torch.where(parent > 0, parent - 1, -1), (code >> step) & 1


def hsigmoid_loss(input, label, num_classes, weight, bias=None, path_table=None, path_code=None,
                  reduction="mean"):
    if path_table is None:
        path_table, path_code = _default_tree(label.long(), num_classes)
    return gathered_logistic(input, weight, bias, path_table.long(), path_code.long().contiguous(),
                             None, 0, reduction)


KERNELS = {"hsigmoid_loss": hsigmoid_loss}
