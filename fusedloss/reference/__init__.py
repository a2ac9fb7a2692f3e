"""The oracle: every loss as its obvious PyTorch formula, differentiable by autograd.

Functions take the normalised arguments functional.py produces (a reduction name, tensors for
lengths, validated shapes); they do no argument checking of their own and run in any float dtype,
float64 included, which is how the tests use them as ground truth.
"""
from .cross_entropy import cross_entropy, nll_loss, softmax_focal_loss
from .linear_cross_entropy import linear_cross_entropy
from .binary import binary_cross_entropy, binary_cross_entropy_with_logits, sigmoid_focal_loss
from .pointwise import huber_loss, l1_loss, mse_loss, smooth_l1_loss
from .ranking import margin_ranking_loss, rank_loss
from .dice import dice_loss
from .ctc import ctc_loss, ctc_loss_with_logits
from .crf import crf_decode, crf_marginals, crf_nll
from .hsigmoid import hsigmoid_loss
from .nce import nce_loss
from .distributed import vocab_parallel_cross_entropy
