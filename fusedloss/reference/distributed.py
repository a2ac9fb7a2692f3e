"""Vocabulary-parallel losses the obvious way: gather every rank's slice, then the plain loss.

Every rank computes the same whole-vocabulary loss, so the gradient of its own slice is that
slice's part of the whole gradient: the gathered copies of other ranks' slices are constants and
the rank's own slice stays the live tensor autograd differentiates.
"""
import torch
import torch.distributed as dist

from .cross_entropy import cross_entropy


def vocab_parallel_cross_entropy(logits_shard, target, process_group=None, *, ignore_index=-100,
                                 reduction="mean", label_smoothing=0.0, z_loss=0.0):
    slices = [torch.empty_like(logits_shard) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(slices, logits_shard.detach().contiguous(), group=process_group)
    slices[dist.get_rank(process_group)] = logits_shard
    logits = torch.cat(slices, dim=-1)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = cross_entropy(flat, target.reshape(-1), ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing, z_loss=z_loss)
    return loss.reshape(target.shape) if reduction == "none" else loss
