"""Noise-contrastive estimation (Paddle Fluid's formula) on the gathered-row logistic engine.

A sample's entries are its true class (target 1) and its k caller-drawn noise classes
(target 0); per entry, with s = x . W[c] + b[c], log o = log sigmoid(s) and log b = log k +
log q(c), the cost is the logistic cost of t = log o - log b: softplus(-t) = -log(o / (o + b))
for the true class, softplus(t) = -log(b / (o + b)) for a negative. d cost / d s is
(sigmoid(t) - y) sigmoid(-s), d cost / d log q(c) is -(sigmoid(t) - y).

The kernels, their passes and what is kept are _gathered_logistic.py's (see its header): one forward
program per sample over its 1 + k classes, and a deterministic sorted-segment scatter for the
weight, bias and (when it requires grad) noise_log_probs gradients.
"""
import torch

from ._gathered_logistic import Paths, gathered_logistic


def nce_loss(input, target, weight, bias, noise_samples, noise_log_probs, reduction="mean",
             queued_target_error=None, queued_noise_error=None):
    """queued_target_error, queued_noise_error: where the range check of the target or of the
    noise samples is the call's (CUDA), its message: the forward kernel records it as it reads
    the classes (the target is entry 0 of each sample, the noise samples the rest)."""
    classes = torch.cat([target.reshape(-1, 1), noise_samples], dim=1).long()  # (N, 1 + k)
    entries = Paths(classes, index_errors=(queued_target_error, queued_noise_error))
    return gathered_logistic(input, weight, bias, entries, noise_log_probs,
                             noise_samples.shape[1], reduction)


KERNELS = {"nce_loss": nce_loss}
