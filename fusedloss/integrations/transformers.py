"""Hugging Face transformers: compute a causal LM's training loss with fusedloss.

`apply(model)` patches one model instance (never its class: other instances of the same class
are untouched) so that `model(input_ids, labels=..., num_items_in_batch=...)` gets its loss from
fusedloss with transformers' semantics (`ForCausalLMLoss`): token t predicts label t + 1 (the
labels are shifted left and padded with `ignore_index`, or taken as given through
`shift_labels`), -100 is ignored, and with `num_items_in_batch` (the Trainer's gradient
accumulation) the loss is the sum divided by it instead of the mean.

Two modes:
- `fused_linear_cross_entropy=True` (default): when training (labels given, `model.training`),
  the forward runs the base model and hands its last hidden states and `lm_head`'s weight (and
  bias) to `fusedloss.functional.linear_cross_entropy`, so the (tokens x vocabulary) logits never
  exist; the config's `final_logit_softcapping` (Gemma-2/3) goes in as `softcap`. The output's
  `logits` is None then (as Liger-Kernel does): returning them would mean building them. The
  rest of the output (cache, hidden states, attentions) is the base model's, passed through. In
  eval mode (the Trainer's evaluation, whose metrics want logits) it runs as the False mode.
- `fused_linear_cross_entropy=False`: the model's own forward runs unchanged and produces its
  logits (soft-capping included); only the loss on them is fusedloss's `cross_entropy`, through
  the instance's `loss_function`.
Without labels the model's own forward runs in both modes, so inference is unchanged. In a
16-bit model the fused path's loss is in the model's dtype (torch's convention for
linear_cross_entropy; the kernel accumulates in float32), where transformers upcasts the logits
and returns a float32 loss.

One mechanism serves every decoder whose causal-LM forward is "base model, then an `nn.Linear`
lm_head" (Llama, Mistral, Qwen2/3, Gemma/Gemma-2/3, Phi-3, ...). Models it cannot patch raise
TypeError (not a decoder-only generative model, no base model, no linear lm_head); models whose
forward changes the logits or the loss in ways the fused path would skip raise ValueError.
"""
import dataclasses
import functools
import inspect
import types
import typing

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from .. import functional as F

IGNORE_INDEX = -100
Model = typing.TypeVar("Model", bound=PreTrainedModel)  # apply returns the instance it patched

# Config settings under which a causal LM's forward does more than lm_head + cross entropy
# (logit scaling: Cohere, Granite; a router's auxiliary loss: Mixtral, Qwen-MoE), which the fused
# path would silently drop. Each maps to the value that leaves the forward plain.
_PLAIN_FORWARD_CONFIG = {"logit_scale": 1.0, "logits_scaling": 1.0, "output_router_logits": False}


def apply(model: Model, *, fused_linear_cross_entropy: bool = True) -> Model:
    """Make this causal-LM instance compute its training loss with fusedloss; returns the model.

    fused_linear_cross_entropy: True, a training forward computes the loss from the hidden
    states and lm_head's weight without the logits (`outputs.logits` is None when labels are
    given in train mode); False, the model's logits go through fusedloss's cross entropy.
    Raises TypeError or ValueError, naming the class and the reason, for a model it cannot patch.
    """
    _check_decoder(model)
    if fused_linear_cross_entropy:
        _check_plain_forward(model)
        forward = model.forward
        if getattr(forward, "__self__", None) is not model:
            raise TypeError(f"cannot patch {type(model).__name__}: its forward was already "
                            f"replaced by {forward!r} (e.g. accelerate's device-map hooks); apply "
                            "first")
        # the function, not the bound method, so that a deepcopy of the model rebinds it
        model.forward = types.MethodType(_fused_forward(forward.__func__), model)
    model.loss_function = causal_lm_loss  # PreTrainedModel's setter: this instance only
    return model


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor | None, vocab_size: int,
                   num_items_in_batch: int | torch.Tensor | None = None,
                   ignore_index: int = IGNORE_INDEX, shift_labels: torch.Tensor | None = None,
                   **kwargs: object) -> torch.Tensor:
    """transformers' ForCausalLMLoss with fusedloss's cross entropy (same arguments)."""
    del kwargs  # the model's other forward kwargs, which the loss does not use
    target = _shifted_labels(labels, shift_labels, ignore_index).to(logits.device)
    # float32 logits, as transformers upcasts them before its loss
    loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), target,
                           ignore_index=ignore_index, reduction=_reduction(num_items_in_batch))
    return _normalise(loss, num_items_in_batch)


def _fused_forward(original):
    """A forward that, when training, computes the loss from the hidden states (module header)
    and otherwise calls `original`, the forward function it replaces."""
    signature = inspect.signature(original)
    keeps_logits = "logits_to_keep" in signature.parameters
    var_keyword = next((p.name for p in signature.parameters.values()
                        if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    output_class = _output_class(signature)
    output_fields = {field.name for field in dataclasses.fields(output_class)}

    @functools.wraps(original)  # keeps the signature, which the Trainer reads to pick columns
    def forward(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs).arguments
        labels = arguments.get("labels")
        if labels is None or not self.training:
            return original(self, *args, **kwargs)
        del arguments["self"], arguments["labels"]
        arguments.update(arguments.pop(var_keyword, {}))
        return_dict = arguments.pop("return_dict", None)
        logits_to_keep = arguments.pop("logits_to_keep", 0) if keeps_logits else 0
        num_items_in_batch = arguments.pop("num_items_in_batch", None)
        ignore_index = arguments.pop("ignore_index", IGNORE_INDEX)
        shift_labels = arguments.pop("shift_labels", None)

        outputs = self.base_model(**arguments)
        hidden = _keep(outputs.last_hidden_state, logits_to_keep)
        target = _shifted_labels(labels, shift_labels, ignore_index).to(hidden.device)
        head = self.lm_head
        softcap = getattr(self.config.get_text_config(), "final_logit_softcapping", None)
        loss = F.linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, target,
                                      linear_bias=head.bias, ignore_index=ignore_index,
                                      reduction=_reduction(num_items_in_batch), softcap=softcap)
        output = output_class(loss=_normalise(loss, num_items_in_batch), logits=None,
                              **{name: value for name, value in outputs.items()
                                 if name in output_fields})
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return output if return_dict else output.to_tuple()

    return forward


def _output_class(signature):
    """The forward's annotated output class (CausalLMOutputWithPast for Llama and most others)."""
    annotation = signature.return_annotation
    if inspect.isclass(annotation) and issubclass(annotation, ModelOutput):
        return annotation
    return CausalLMOutputWithPast


def _keep(hidden, logits_to_keep):
    """The positions the model would compute logits for: the last `logits_to_keep` (0: all), or
    the given indices, as the models' own `logits_to_keep` slicing."""
    if isinstance(logits_to_keep, int):
        return hidden[:, -logits_to_keep:, :]  # -0 is 0: every position
    return hidden[:, logits_to_keep, :]


def _shifted_labels(labels, shift_labels, ignore_index):
    """Flat targets with token t predicting label t + 1. Padding one ignored label at the end
    rather than dropping the last position keeps every hidden state's row, as ForCausalLMLoss."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return shift_labels.reshape(-1)


def _reduction(num_items_in_batch):
    # gradient accumulation: each micro-batch's sum over the tokens of the whole batch
    return "mean" if num_items_in_batch is None else "sum"


def _normalise(loss, num_items_in_batch):
    if num_items_in_batch is None:
        return loss
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _check_decoder(model):
    name = type(model).__name__
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"fusedloss.integrations.transformers.apply needs a transformers "
                        f"PreTrainedModel, got {name}")
    supported = "apply supports decoder-only causal LMs (forward: base model, then lm_head)"
    if getattr(model.config, "is_encoder_decoder", False):
        raise TypeError(f"cannot patch {name}: it is an encoder-decoder model; {supported}")
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"cannot patch {name}: it does not generate (an encoder-only model or a "
                        f"task head, not a causal LM); {supported}")
    if model.base_model is model:
        raise TypeError(f"cannot patch {name}: it has no base model under base_model_prefix "
                        f"{model.base_model_prefix!r}")
    if not isinstance(getattr(model, "lm_head", None), torch.nn.Linear):
        raise TypeError(f"cannot patch {name}: it needs an nn.Linear `lm_head`, got "
                        f"{type(getattr(model, 'lm_head', None)).__name__}")


def _check_plain_forward(model):
    config = model.config.get_text_config()
    for setting, plain in _PLAIN_FORWARD_CONFIG.items():
        value = getattr(config, setting, plain)
        if value != plain:
            raise ValueError(f"cannot fuse {type(model).__name__}'s loss: its config sets "
                             f"{setting}={value!r}, which its forward applies beyond lm_head and "
                             "cross entropy; use apply(model, fused_linear_cross_entropy=False)")
