"""Noise-contrastive estimation with caller-drawn negatives, in Paddle Fluid's formula.

For a class c with score s_c = input . weight[c] + bias[c], Fluid's nce scores the class with
o_c = sigmoid(s_c) (not exp(s_c) as textbook NCE) and sets b_c = k * q(c) for k negatives drawn
from the noise distribution q. The true class costs -log(o / (o + b)), each negative
-log(b / (o + b)).
"""
import torch

from .. import _args
from .._reduction import reduce


def nce_loss(input, target, weight, bias, noise_samples, noise_log_probs, reduction="mean",
             queued_target_error=None, queued_noise_error=None):
    """Per sample: the true class's cost plus the costs of its k negatives.

    input (N, D), target (N,) or (N, 1), weight (C, D), bias (C,) or None, noise_samples (N, k),
    noise_log_probs (C,). Worked in log space (log o = logsigmoid(s)) so large scores stay finite.
    queued_target_error, queued_noise_error: where functional.py left the range check of the
    target or of the noise samples to the call (CUDA), its message, queued on the device here.
    """
    for indices, message in ((target, queued_target_error), (noise_samples, queued_noise_error)):
        if message is not None:
            _args.queue_within(indices, 0, weight.shape[0] - 1, message)
    classes = torch.cat([target.reshape(-1, 1), noise_samples], dim=1).long()  # (N, 1 + k)
    scores = (input.unsqueeze(1) * weight[classes]).sum(-1)
    if bias is not None:
        scores = scores + bias[classes]
    num_noise = noise_samples.shape[1]
    log_o = torch.nn.functional.logsigmoid(scores)
    log_b = noise_log_probs.to(scores.dtype)[classes] + torch.log(scores.new_tensor(float(num_noise)))
    log_o_plus_b = torch.logaddexp(log_o, log_b)
    per_sample = -(log_o[:, 0] - log_o_plus_b[:, 0]) - (log_b[:, 1:] - log_o_plus_b[:, 1:]).sum(1)
    return reduce(per_sample, reduction)
