"""fusedloss.integrations.transformers on tiny randomly initialised models built from configs.

Every comparison is against a deepcopy of the model taken before patching (its twin), which
computes the loss with transformers' own ForCausalLMLoss: loss and every parameter gradient in
float32, with some labels ignored, with and without `num_items_in_batch`, in both modes.
"""
import copy
import functools
import inspect
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

transformers = pytest.importorskip("transformers")

import fusedloss.functional  # noqa: E402  (after the skip: the module needs transformers)
from fusedloss.integrations import transformers as integration  # noqa: E402

TOLERANCE = dict(rtol=1e-5, atol=1e-6)
VOCAB = 256
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
             initializer_range=0.2)  # logits of a few units: the soft-cap below is active


def llama(**overrides):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**SMALL, **overrides}))


def llama_with_bias():
    model = llama()
    model.lm_head = torch.nn.Linear(SMALL["hidden_size"], VOCAB, bias=True)
    return model


def gemma2():
    config = transformers.Gemma2Config(**SMALL, head_dim=16, sliding_window=4,
                                       final_logit_softcapping=2.0)
    return transformers.Gemma2ForCausalLM(config)


def qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SMALL))


MODELS = {"llama": llama, "llama-lm-head-bias": llama_with_bias, "gemma2-softcap": gemma2,
          "qwen2": qwen2}


def model_and_twin(build, fused):
    torch.manual_seed(0)
    model = build()
    twin = copy.deepcopy(model)
    assert integration.apply(model, fused_linear_cross_entropy=fused) is model
    return model, twin


def batch(batch_size=2, length=8, vocab=VOCAB):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (batch_size, length), generator=generator)
    labels = input_ids.clone()
    labels[0, :3] = -100  # a masked prompt
    labels[1, -2:] = -100  # padding
    return input_ids, labels


def assert_same_loss_and_gradients(model, twin, **kwargs):
    loss = model(**kwargs).loss
    expected = twin(**kwargs).loss
    torch.testing.assert_close(loss, expected, **TOLERANCE)
    model.zero_grad()
    twin.zero_grad()
    loss.backward()
    expected.backward()
    twin_parameters = dict(twin.named_parameters())
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, twin_parameters[name].grad, **TOLERANCE,
                                   msg=lambda message: f"{name}: {message}")
    return loss


def test_import_fusedloss_does_not_import_transformers():
    code = ("import sys, fusedloss, fusedloss.integrations; "
            "assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-linear", "logits"])
@pytest.mark.parametrize("name", MODELS)
def test_loss_and_gradients_match_transformers(name, fused):
    model, twin = model_and_twin(MODELS[name], fused)
    input_ids, labels = batch()
    assert_same_loss_and_gradients(model, twin, input_ids=input_ids, labels=labels)
    # gradient accumulation's normalisation: the sum over this batch / the whole batch's count
    assert_same_loss_and_gradients(model, twin, input_ids=input_ids, labels=labels,
                                   num_items_in_batch=torch.tensor(20))


def test_gemma2_softcap_is_applied():
    model, twin = model_and_twin(gemma2, fused=True)
    input_ids, labels = batch()
    loss = model(input_ids, labels=labels).loss
    twin.config.final_logit_softcapping = None
    assert not torch.allclose(loss, twin(input_ids, labels=labels).loss, rtol=1e-3)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-linear", "logits"])
def test_logits_to_keep_and_shift_labels(fused):
    model, twin = model_and_twin(llama, fused)
    input_ids, labels = batch()
    assert_same_loss_and_gradients(model, twin, input_ids=input_ids, labels=labels[:, -4:],
                                   logits_to_keep=4)
    loss_parameters = inspect.signature(transformers.loss.loss_utils.ForCausalLMLoss).parameters
    if "shift_labels" not in loss_parameters:
        pytest.skip(f"transformers {transformers.__version__} has no shift_labels")
    shift_labels = torch.roll(labels, 2, dims=1)  # targets given as they are, not shifted again
    assert_same_loss_and_gradients(model, twin, input_ids=input_ids, labels=labels,
                                   shift_labels=shift_labels)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-linear", "logits"])
def test_outputs(fused):
    model, twin = model_and_twin(gemma2, fused)
    input_ids, labels = batch()
    with torch.no_grad():
        # inference: the model's own forward
        torch.testing.assert_close(model(input_ids).logits, twin(input_ids).logits, rtol=0, atol=0)
        options = dict(labels=labels, output_hidden_states=True, use_cache=True)
        outputs, expected = model(input_ids, **options), twin(input_ids, **options)
        assert (outputs.logits is None) == fused
        expected_fields = set(expected.keys()) - ({"logits"} if fused else set())
        assert set(outputs.keys()) == expected_fields  # the cache and hidden states come through
        for mine, theirs in zip(outputs.hidden_states, expected.hidden_states):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        as_tuple = model(input_ids, labels=labels, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], expected.loss, **TOLERANCE)
        # evaluation keeps the logits (metrics want them); the loss is still fusedloss's
        model.eval(), twin.eval()
        outputs, expected = model(input_ids, labels=labels), twin(input_ids, labels=labels)
        torch.testing.assert_close(outputs.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(outputs.loss, expected.loss, **TOLERANCE)
        generated = model.generate(input_ids, max_new_tokens=3, do_sample=False)
        assert torch.equal(generated, twin.generate(input_ids, max_new_tokens=3, do_sample=False))


def test_other_instances_are_unchanged():
    torch.manual_seed(0)
    patched, other = llama(), llama()
    original_forward = type(patched).forward
    integration.apply(patched)
    integration.apply(copy.deepcopy(other), fused_linear_cross_entropy=False)
    assert type(patched).forward is original_forward and "forward" not in vars(other)
    assert other.loss_function is transformers.loss.loss_utils.ForCausalLMLoss
    input_ids, labels = batch()
    assert other(input_ids, labels=labels).logits is not None
    # a deepcopy of a patched model runs its own weights, not the original's
    twin = copy.deepcopy(patched)
    with torch.no_grad():
        twin.lm_head.weight.zero_()
        assert not torch.equal(twin(input_ids).logits, patched(input_ids).logits)


def test_models_it_cannot_patch():
    torch.manual_seed(0)
    with pytest.raises(TypeError, match="PreTrainedModel, got Linear"):
        integration.apply(torch.nn.Linear(2, 2))
    bert = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32))
    with pytest.raises(TypeError, match="BertForMaskedLM: it does not generate"):
        integration.apply(bert)
    hooked = llama()
    hooked.forward = functools.partial(type(hooked).forward, hooked)
    with pytest.raises(TypeError, match="LlamaForCausalLM: its forward was already replaced"):
        integration.apply(hooked)
    headless = llama()
    headless.lm_head = torch.nn.Identity()
    with pytest.raises(TypeError, match="LlamaForCausalLM: it needs an nn.Linear `lm_head`"):
        integration.apply(headless)
    cohere = transformers.CohereForCausalLM(transformers.CohereConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, logit_scale=0.5))
    with pytest.raises(ValueError, match="CohereForCausalLM.*logit_scale=0.5"):
        integration.apply(cohere)
    integration.apply(cohere, fused_linear_cross_entropy=False)  # the model's own logits: fine


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op returns."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.bytes = max(self.bytes, leaf.numel() * leaf.element_size())
        return out


def test_fused_path_never_builds_the_logits():
    vocab, hidden = 1024, 4  # lm_head and its gradient (vocab x hidden): 1/16 of the logits
    model, twin = model_and_twin(
        lambda: llama(vocab_size=vocab, hidden_size=hidden, intermediate_size=16,
                      num_hidden_layers=1, num_attention_heads=1, initializer_range=0.02),
        fused=True)
    input_ids, labels = batch(length=32, vocab=vocab)
    logits_bytes = input_ids.numel() * vocab * 4
    largest = {}
    for name, candidate in (("patched", model), ("transformers", twin)):
        with LargestOutput() as recorder:
            candidate(input_ids, labels=labels).loss.backward()
        largest[name] = recorder.bytes
    assert largest["transformers"] >= logits_bytes  # the recorder sees the logits where they are
    assert largest["patched"] <= logits_bytes / 8, largest


@pytest.mark.cpu_tensors  # the Trainer runs on the CPU (use_cpu)
def test_trainer_trains_the_patched_model(tmp_path, monkeypatch):
    calls = []
    fused = fusedloss.functional.linear_cross_entropy
    monkeypatch.setattr(fusedloss.functional, "linear_cross_entropy",
                        lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs))
    torch.manual_seed(0)
    model = integration.apply(llama(vocab_size=64, hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=1, initializer_range=0.02))
    sequence = torch.arange(8) * 5 % 64
    dataset = [{"input_ids": sequence, "labels": sequence}] * 16
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=1,
        gradient_accumulation_steps=2, learning_rate=5e-2, logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=dataset)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(calls) == 16  # 8 steps of 2 micro-batches, each through the fused loss
    assert losses[-1] < 0.5 * losses[0], losses
