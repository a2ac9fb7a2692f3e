"""The catalog of losses: one `LossInfo` per public loss, the table every generic consumer reads.

The fuzzer and `python -m fusedloss check`, the comparison rule (torch twin, torch's error
baseline), the invalid-call tests, the reference-vs-torch tests, the README table test and the
benchmarks all iterate over `LOSSES`. Adding a loss is its reference, its kernel, its public
function and its entry here (with its strategies); nothing else lists losses.

Importing this module needs no hypothesis: an entry names its strategies, and `valid_calls` /
`invalid_calls` import `fusedloss.testing.strategies.<family>` only when asked.
"""
import dataclasses
import importlib
import inspect
import typing

import torch
import torch.nn.functional as torch_F

from . import functional

# Keyword arguments of the cross-entropy losses that torch does not have, with their defaults:
# a call that sets one has no torch twin to measure torch's error against.
_LOGIT_EXTRAS = {"z_loss": 0.0, "softcap": None, "return_lse": False}


def _ctc_on_logits(logits, *args, **kwargs):
    """torch's eager ctc_loss_with_logits: log_softmax, then torch's CTC."""
    return torch_F.ctc_loss(torch.log_softmax(logits, -1), *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class LossInfo:
    """One loss: where it lives, what it is compared against, how calls of it are drawn.

    function: the public fusedloss.functional function (its name is the loss's name).
    family: the module name of the loss in reference/, triton_kernels/ and testing/strategies/.
    twin: the torch.nn.functional function of the same name and semantics, or None.
    twin_gradient_differs: the twin's gradient is another quantity than d loss / d input (so
        torch's error there says nothing and must not widen the allowance).
    composition: without a twin, a torch composition of the same loss (torch's eager baseline).
    eager_reference: the reference is itself a plain composition of torch operations, as a user
        would write the loss in eager mode: run at the input's dtype it is torch's baseline.
    extras: fusedloss-only keyword arguments and their defaults (no twin when one is set).
    valid, invalid: names of the strategies in fusedloss.testing.strategies.<family>: valid(dtype)
        draws calls that must agree with the reference, invalid(name) calls that must raise.
    counterpart: the README's "torch twin" cell for a loss without a twin (e.g. "torchvision's").
    notes: the README's notes cell.
    """
    function: typing.Callable
    family: str
    valid: str
    invalid: str
    twin: str = None
    twin_gradient_differs: bool = False
    composition: typing.Callable = None
    eager_reference: bool = False
    extras: dict = dataclasses.field(default_factory=dict)
    counterpart: str = "—"
    notes: str = ""

    @property
    def name(self):
        return self.function.__name__

    @property
    def arg_names(self):
        """The function's parameter names in order (the reproducer's variable names)."""
        return tuple(name for name, parameter in inspect.signature(self.function).parameters.items()
                     if parameter.kind is parameter.POSITIONAL_OR_KEYWORD)

    def strategies(self):
        """The family's strategies module (imports hypothesis)."""
        return importlib.import_module(f"fusedloss.testing.strategies.{self.family}")

    def valid_calls(self, dtype):
        return getattr(self.strategies(), self.valid)(dtype)

    def invalid_calls(self):
        return getattr(self.strategies(), self.invalid)(self.name)

    @property
    def readme_twin(self):
        return f"`F.{self.twin}`" if self.twin else self.counterpart


LOSSES = (
    LossInfo(functional.cross_entropy, "cross_entropy", "cross_entropy_calls",
             "invalid_class_index_calls", twin="cross_entropy", eager_reference=True,
             extras={**_LOGIT_EXTRAS, "inplace_backward": False},
             notes="hard and soft labels, weight, ignore_index, label_smoothing, `z_loss`, "
                   "`softcap`, `return_lse`, `inplace_backward`, N-d"),
    LossInfo(functional.nll_loss, "cross_entropy", "nll_loss_calls", "invalid_class_index_calls",
             twin="nll_loss"),
    LossInfo(functional.softmax_focal_loss, "cross_entropy", "softmax_focal_loss_calls",
             "invalid_class_index_calls", eager_reference=True,
             notes="mean over non-ignored tokens"),
    LossInfo(functional.linear_cross_entropy, "linear_cross_entropy", "linear_cross_entropy_calls",
             "invalid_linear_cross_entropy_calls", twin="linear_cross_entropy",
             eager_reference=True, extras=dict(_LOGIT_EXTRAS),
             notes="input `(N, H)` or `(H,)`, weight `(C, H)` or K-dimensional "
                   "`(C, d1, ..., dk, H)`; blocks of tokens and vocabulary, never the whole "
                   "`(N, C)` logits"),
    LossInfo(functional.binary_cross_entropy_with_logits, "binary",
             "binary_cross_entropy_with_logits_calls", "invalid_binary_calls",
             twin="binary_cross_entropy_with_logits", notes="weight, pos_weight broadcast"),
    LossInfo(functional.binary_cross_entropy, "binary", "binary_cross_entropy_calls",
             "invalid_binary_calls", twin="binary_cross_entropy",
             notes="logs clamped at -100 as torch"),
    LossInfo(functional.sigmoid_focal_loss, "binary", "sigmoid_focal_loss_calls",
             "invalid_binary_calls", eager_reference=True, counterpart="torchvision's",
             notes="`alpha = -1` disables alpha"),
    LossInfo(functional.smooth_l1_loss, "pointwise", "smooth_l1_loss_calls",
             "invalid_pointwise_calls", twin="smooth_l1_loss", notes="`beta = 0` is L1"),
    LossInfo(functional.huber_loss, "pointwise", "huber_loss_calls", "invalid_pointwise_calls",
             twin="huber_loss", notes="torch 2.13's `weight`"),
    LossInfo(functional.l1_loss, "pointwise", "l1_loss_calls", "invalid_pointwise_calls",
             twin="l1_loss", notes="torch 2.13's `weight`"),
    LossInfo(functional.mse_loss, "pointwise", "mse_loss_calls", "invalid_pointwise_calls",
             twin="mse_loss", notes="torch 2.13's `weight`"),
    LossInfo(functional.margin_ranking_loss, "ranking", "margin_ranking_loss_calls",
             "invalid_margin_ranking_loss_calls", twin="margin_ranking_loss"),
    LossInfo(functional.rank_loss, "ranking", "rank_loss_calls", "invalid_rank_loss_calls",
             eager_reference=True, notes="RankNet"),
    LossInfo(functional.dice_loss, "dice", "dice_loss_calls", "invalid_dice_loss_calls",
             eager_reference=True, notes="Paddle's one-hot label semantics"),
    # torch's native CTC backward returns the gradient with log_softmax's Jacobian folded in
    # (right only after a log_softmax), not d loss / d log_probs, which the reference gives
    LossInfo(functional.ctc_loss, "ctc", "ctc_loss_calls", "invalid_ctc_calls", twin="ctc_loss",
             twin_gradient_differs=True,
             notes="padded or concatenated targets, lengths as tensors or lists"),
    LossInfo(functional.ctc_loss_with_logits, "ctc", "ctc_loss_with_logits_calls",
             "invalid_ctc_calls", composition=_ctc_on_logits, notes="log-softmax fused in"),
    # The CTC and CRF recursions are no eager_reference: their reference at 16 bits is no eager
    # implementation anyone would use, and would only loosen the check.
    *(LossInfo(fn, "crf", f"{fn.__name__}_calls", "invalid_crf_calls",
               counterpart="— (pytorch-crf)",
               notes="batch-first; any mask with the first step on, applied step by step as "
                     "pytorch-crf; any tag count (K tiled)")
      for fn in (functional.crf_nll, functional.crf_decode, functional.crf_marginals)),
    LossInfo(functional.hsigmoid_loss, "hsigmoid", "hsigmoid_loss_calls",
             "invalid_hsigmoid_loss_calls", eager_reference=True, counterpart="— (Paddle)",
             notes="default complete binary tree or custom paths"),
    LossInfo(functional.nce_loss, "nce", "nce_loss_calls", "invalid_nce_loss_calls",
             eager_reference=True, counterpart="— (Paddle)",
             notes="Fluid's formula, caller-drawn negatives"),
)

BY_NAME = {info.name: info for info in LOSSES}
NAMES = tuple(BY_NAME)


def get(name):
    """The entry of loss `name`; ValueError naming the known losses otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; the catalog knows: {', '.join(NAMES)}") from None


def readme_rows():
    """The README's loss table rows, one per loss, consecutive losses of a family with the same
    cells merged into one row: (names, torch twin, notes)."""
    rows = []
    for info in LOSSES:
        cells = (info.family, info.readme_twin, info.notes)
        if rows and rows[-1][1] == cells:
            rows[-1][0].append(info.name)
        else:
            rows.append(([info.name], cells))
    return [(names, twin, notes) for names, (_, twin, notes) in rows]
