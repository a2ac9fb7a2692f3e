"""Vocabulary-parallel cross entropy over torch.distributed (any backend: gloo, nccl).

Each rank holds a contiguous slice of the vocabulary, in rank order. On the kernels (CUDA, or
the interpreter) each rank's sweep is the cross-entropy row kernel on its slice: it writes the
slice's per-token row statistics (max, sum of exponentials, target logit, the smoothing sum),
two all-reduces of those O(tokens) statistics make them the whole vocabulary's, never gathering
the logits, and a second launch writes the loss and the gradient of the rank's own slice, so the
backward only scales it by grad_output. The reference backend gathers the slices and runs the
plain loss. Values and gradients equal those of fusedloss.functional.cross_entropy on the
gathered logits.
"""
import importlib

import torch
import torch.distributed as dist

from . import _args, _backend, _reduction, reference

_REDUCE_OPS = {"max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}


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
    num_local = logits_shard.shape[-1]
    num_classes = num_local * dist.get_world_size(process_group)
    # off the host the second launch of the row kernel records the range check
    index_error = _args.check_class_indices(target, num_classes, ignore_index,
                                            kernel_records=True)
    options = dict(ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss)
    if not (_backend.resolve(logits_shard.device) == "triton"
            and _args.kernels_take([logits_shard])):
        if index_error is not None:
            _args.queue_class_indices(target, num_classes, ignore_index, index_error)
        return reference.vocab_parallel_cross_entropy(logits_shard, target, process_group,
                                                      **options)
    kernels = importlib.import_module("fusedloss.triton_kernels.cross_entropy")

    def all_reduce(tensor, op):
        dist.all_reduce(tensor, _REDUCE_OPS[op], group=process_group)
    return kernels.vocab_shard_cross_entropy(
        logits_shard, target, all_reduce, class_offset=dist.get_rank(process_group) * num_local,
        total_classes=num_classes, index_error=index_error, **options)


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
