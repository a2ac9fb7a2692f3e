"""Vocabulary-parallel cross entropy over torch.distributed (any backend: gloo, nccl).

Each rank holds a contiguous slice of the vocabulary, in rank order. The forward makes three
all-reduces of O(tokens) statistics (max, sum of exponentials, target logit and, with label
smoothing, the logit sum), never gathering the logits; the backward is local: each rank writes
the gradient of its own slice from the saved global log-sum-exp. Values and gradients equal those
of fusedloss.functional.cross_entropy on the gathered logits.

The per-shard arithmetic is torch operations in fp32 (fp64 for fp64 logits); a fused shard kernel is future work.
"""
import torch
import torch.distributed as dist

from . import _args, _reduction


def _shard_range(num_local, process_group):
    """[start, end) of this rank's slice, given every rank holds the same number of classes."""
    rank = dist.get_rank(process_group)
    return rank * num_local, (rank + 1) * num_local


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, process_group, ignore_index, label_smoothing, z_loss):
        world = dist.get_world_size(process_group)
        num_local = logits.shape[-1]
        num_classes = num_local * world
        start, end = _shard_range(num_local, process_group)
        x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)

        global_max = x.max(dim=-1).values if num_local else x.new_full(x.shape[:-1], -torch.inf)
        dist.all_reduce(global_max, dist.ReduceOp.MAX, group=process_group)
        global_max = torch.where(torch.isfinite(global_max), global_max, 0.0)
        kept = target != ignore_index
        local = (target >= start) & (target < end) & kept
        local_index = torch.where(local, target - start, 0).unsqueeze(-1)
        stats = torch.stack([
            (x - global_max.unsqueeze(-1)).exp().sum(-1),
            x.gather(-1, local_index).squeeze(-1) * local,
            x.sum(-1),
        ])
        dist.all_reduce(stats, group=process_group)
        sum_exp, target_logit, logit_sum = stats
        lse = global_max + sum_exp.log()

        loss = ((1 - label_smoothing) * (lse - target_logit)
                + label_smoothing * (lse - logit_sum / num_classes) + z_loss * lse ** 2) * kept
        ctx.save_for_backward(x, lse, local, local_index, kept)
        ctx.coefficients = (label_smoothing, z_loss, num_classes)
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        x, lse, local, local_index, kept = ctx.saved_tensors
        label_smoothing, z_loss, num_classes = ctx.coefficients
        probs = (x - lse.unsqueeze(-1)).exp()
        grad = probs * (1 + 2 * z_loss * lse.unsqueeze(-1)) - label_smoothing / num_classes
        grad.scatter_add_(-1, local_index, -(1 - label_smoothing) * local.unsqueeze(-1).to(x.dtype))
        grad = grad * (grad_loss.to(x.dtype) * kept).unsqueeze(-1)
        return grad.to(grad_loss.dtype), None, None, None, None, None


class _CopyToVocabParallel(torch.autograd.Function):
    """Identity forward; backward sums the partial input gradients of all ranks (the input is
    replicated, each rank's projection contributes its slice's share)."""

    @staticmethod
    def forward(ctx, input, process_group):
        ctx.process_group = process_group
        return input.view_as(input)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.process_group)
        return grad, None


def vocab_parallel_cross_entropy(logits_shard, target, process_group=None, *, ignore_index=-100,
                                 reduction="mean", label_smoothing=0.0, z_loss=0.0):
    """Cross entropy of logits split over ranks along the vocabulary (last) dimension.

    logits_shard (..., V / world) on each rank, target (...) global class indices. 'mean' divides
    by the number of non-ignored tokens, as cross_entropy without class weights does.
    """
    reduction = _reduction.check_reduction(reduction)
    _args.check_label_smoothing(label_smoothing)
    if logits_shard.shape[:-1] != target.shape:
        raise ValueError(f"target shape {list(target.shape)} must equal the logits' leading "
                         f"dimensions {list(logits_shard.shape[:-1])}")
    num_classes = logits_shard.shape[-1] * dist.get_world_size(process_group)
    _args.check_class_indices(target, num_classes, ignore_index)
    loss = _VocabParallelCrossEntropy.apply(logits_shard, target, process_group, ignore_index,
                                            label_smoothing, z_loss)
    return _reduction.reduce(loss, reduction, (target != ignore_index).sum())


def vocab_parallel_linear_cross_entropy(input, weight_shard, target, process_group=None, *,
                                        linear_bias_shard=None, ignore_index=-100,
                                        reduction="mean", label_smoothing=0.0, z_loss=0.0):
    """The projection input @ weight_shard.T of each rank's vocabulary slice, then
    vocab_parallel_cross_entropy; the input's gradient is summed over ranks."""
    input = _CopyToVocabParallel.apply(input, process_group)
    logits_shard = torch.nn.functional.linear(input, weight_shard, linear_bias_shard)
    return vocab_parallel_cross_entropy(logits_shard, target, process_group,
                                        ignore_index=ignore_index, reduction=reduction,
                                        label_smoothing=label_smoothing, z_loss=z_loss)
