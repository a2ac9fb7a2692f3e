"""Hierarchical sigmoid (Paddle's hsigmoid) on the gathered-row logistic engine.

A sample visits the inner nodes on its class's tree path, with the path code's bit as the
target of each node's logistic cost. The default tree's paths (Paddle's code = c + C scheme,
ceil(log2 C) steps) are computed in the forward kernel from the labels, nothing (N, L) built
on the host; a custom tree's path table and codes are used as given. The kernels, their
passes and what is kept are _gathered_logistic.py's (its header).
"""
from ._gathered_logistic import DefaultTree, Paths, gathered_logistic


def hsigmoid_loss(input, label, num_classes, weight, bias=None, path_table=None, path_code=None,
                  reduction="mean", queued_index_error=None):
    """queued_index_error: where the range check of the labels (default tree) or of path_table
    is the call's (CUDA), its message: the forward kernel records it as it reads them."""
    if path_table is None:
        entries = DefaultTree(label.long().reshape(-1).contiguous(), num_classes,
                              (queued_index_error,))
    else:
        entries = Paths(path_table.long().contiguous(), path_code.long().contiguous(),
                        (queued_index_error,))
    return gathered_logistic(input, weight, bias, entries, None, 0, reduction)


KERNELS = {"hsigmoid_loss": hsigmoid_loss}
