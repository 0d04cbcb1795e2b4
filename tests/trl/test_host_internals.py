"""The host internals guards (scale_plugins.hf.internals, scale_plugins.trl.internals): every private name SCALe
relies on is checked, and a host that lacks one gets a clear error naming the tested versions, or a counted, logged
fallback; never a silent change. Each guard is shown to fire by taking the name away. Runs on every TRL lane (0.24,
1.9, 1.16): the tests that need TRL's fused LM head (1.16) or its absence say so."""

from __future__ import annotations

import logging
import types

import pytest
import torch
import transformers
import trl

import scale_plugins.hf.internals as hf_internals
import scale_plugins.trl.internals as trl_internals
from scale_plugins.hf.head import FALLBACK_NAME, fused_head_unsupported
from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer
from scale_plugins.versions import installed_version, range_spec

from . import helpers
from .test_fused_head import MODELS, batch, build, fused_step, stock_step

TRL_HEAD = trl_internals.fused_head() is not None
needs_trl_head = pytest.mark.skipif(not TRL_HEAD, reason="TRL < 1.16 has no fused LM head")
without_trl_head = pytest.mark.skipif(TRL_HEAD, reason="this TRL has its fused LM head")


def _names_the_range(err: BaseException, package: str) -> None:
    message = str(err)
    assert f"{package} {range_spec(package)}" in message
    assert f"installed: {installed_version(package)}" in message
    assert f"pip install '{package}{range_spec(package)}'" in message


# -- hf: the processing after the LM head, from the config ------------------------------------------------------

#: what each architecture of test_fused_head does after its head, as its config says
EXPECTED = {
    "qwen2-tied": {},
    "qwen2-untied": {},
    "llama-tied": {},
    "llama-untied": {},
    "gemma3-softcap": {"softcap": 2.5},
    "gemma2-softcap": {"softcap": 2.5},
    "cohere-logit-scale": {"logit_multiplier": 0.25},
    "granite-logits-scaling": {"logit_divisor": 3.0},
    "hyperclovax-logits-scaling": {"logit_multiplier": 2.0},
    "vlm-qwen2_5_vl": {},
    "vlm-llava_next": {},
    "vlm-gemma3": {},
}


def test_every_architecture_has_its_expectation():
    assert set(EXPECTED) == set(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_logit_settings_are_read_from_the_config(name):
    """Per architecture: the settings the fused function gets, and that each one is switched off where the forward
    reads it (the config, and Cohere's own attribute) and is back afterwards (the equal-loss test of test_fused_head
    shows they are the model's)."""
    model = build(name)
    post, neutral = hf_internals.logit_processing(hf_internals.unwrap(model))
    assert post == EXPECTED[name]
    config = hf_internals.text_config(model)
    active = {
        a: getattr(config, a) for a, _ in hf_internals.LOGIT_SETTINGS if getattr(config, a, None) not in (None, 1.0)
    }
    assert {attr for _, attr, _ in neutral} == set(active)
    assert all(any(obj is config and attr == a for obj, attr, _ in neutral) for a in active)
    if name == "cohere-logit-scale":
        assert any(obj is model and attr == "logit_scale" for obj, attr, _ in neutral)  # its own copy
    with hf_internals.attributes_set(neutral):
        assert all(getattr(obj, attr) == value for obj, attr, value in neutral)
    assert {a: getattr(config, a) for a in active} == active


def test_a_setting_the_forward_does_not_apply_is_not_applied():
    """Gemma 3's vision-language model does not soft-cap, whatever its text config says; TRL's head would apply the
    config's value. SCALe sees the forward does not name it: the loss comes from the logits (counted, with the reason)
    and equals the stock loss."""
    from transformers import AutoModelForImageTextToText

    from scale_plugins.testing import tiny_vlm_config

    from .test_fused_head import VOCAB

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(
        tiny_vlm_config("gemma3", vocab_size=VOCAB, final_logit_softcapping=2.5)
    ).train()
    assert model.config.get_text_config().final_logit_softcapping == 2.5
    reasons = []
    stock_loss, _ = stock_step(model, batch())
    result, _ = fused_step(model, batch(), on_fallback=lambda *a: reasons.append(a))
    assert not result.fused
    assert reasons[0][0] == FALLBACK_NAME and "final_logit_softcapping=2.5" in reasons[0][1]
    assert "does not name it" in reasons[0][1]
    assert abs(float(result.loss) - float(stock_loss)) <= 1e-5 * float(stock_loss)


def test_a_model_attribute_that_disagrees_with_its_config():
    model = build("cohere-logit-scale")
    model.logit_scale = 0.5  # the forward multiplies by this one, the config says 0.25
    reason = fused_head_unsupported(model)
    assert reason is not None and "logit_scale is 0.5 where the text config" in reason


def test_a_scale_applied_with_another_operator():
    """A config whose logits_scaling multiplies (HyperCLOVA X's rule) on a forward that divides (Granite's)."""
    model = build("granite-logits-scaling")
    model.config.model_type = "hyperclovax"
    reason = fused_head_unsupported(model)
    assert reason is not None and "not seen to multiply the logits by it" in reason


def test_a_forward_whose_source_cannot_be_read(monkeypatch):
    monkeypatch.setattr(hf_internals, "forward_source", lambda model: None)
    reason = fused_head_unsupported(build("qwen2-tied"))
    assert reason is not None and "cannot be read" in reason


def test_a_logit_processing_no_config_says():
    source = hf_internals.forward_source(build("qwen2-tied"))
    assert source is not None and not hf_internals.UNSUPPORTED_SOURCE.search(source)
    assert hf_internals.UNSUPPORTED_SOURCE.search("logits = self.logit_softcap(logits)")
    assert hf_internals.UNSUPPORTED_SOURCE.search("logits = logits[..., : self.config.unpadded_vocab_size]")


# -- hf: accelerate's device hooks and torch.compile ------------------------------------------------------------


def test_accelerate_hooked_head_keeps_its_hook():
    from accelerate.hooks import ModelHook, add_hook_to_module

    calls = []

    class Counting(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            calls.append(1)
            return args, kwargs

    model = build("qwen2-untied")
    stock_loss, _ = stock_step(model, batch())
    head = model.get_output_embeddings()
    add_hook_to_module(head, Counting())
    assert hf_internals.head_forward_attribute(head) == hf_internals.ACCELERATE_OLD_FORWARD
    calls.clear()
    result, _ = fused_step(model, batch())
    assert result.fused and calls == [1]  # the hook ran around the fused head
    assert abs(float(result.loss) - float(stock_loss)) <= 1e-5 * float(stock_loss)


def test_accelerate_hook_without_its_old_forward_is_an_error():
    from accelerate.hooks import ModelHook, add_hook_to_module

    model = build("qwen2-untied")
    head = model.get_output_embeddings()
    add_hook_to_module(head, ModelHook())
    del head._old_forward
    with pytest.raises(hf_internals.UnsupportedTransformersError, match="_old_forward beside _hf_hook"):
        fused_step(model, batch())


def test_torch_compile_is_unwrapped_and_checked():
    model = build("qwen2-tied")
    compiled = torch.compile(model)
    assert hf_internals.unwrap(compiled) is model
    del compiled._modules[hf_internals.COMPILED_MODULE]
    with pytest.raises(hf_internals.UnsupportedTransformersError, match="_orig_mod") as err:
        hf_internals.unwrap(compiled)
    _names_the_range(err.value, "torch")


# -- hf: the Trainer --------------------------------------------------------------------------------------------


def test_the_installed_trainer_passes():
    flag = hf_internals.check_trainer()
    assert flag in (hf_internals.LOSS_SCALED_FLAG, hf_internals.LOSS_KWARGS_FLAG)
    assert hf_internals._callers(transformers.Trainer, hf_internals.BATCH_SAMPLES)


def test_a_training_loop_that_no_longer_calls_get_batch_samples(monkeypatch):
    for name in hf_internals._callers(transformers.Trainer, hf_internals.BATCH_SAMPLES):
        monkeypatch.setattr(transformers.Trainer, name, lambda self, *args, **kwargs: None)
    with pytest.raises(hf_internals.UnsupportedTransformersError, match="calling self.get_batch_samples") as err:
        hf_internals.check_trainer()
    _names_the_range(err.value, "transformers")


def test_a_training_step_that_reads_no_loss_scaling_flag(monkeypatch):
    monkeypatch.setattr(transformers.Trainer, "training_step", lambda self, *args, **kwargs: None)
    flag = hf_internals.LOSS_SCALED_FLAG if hf_internals.LOSS_SCALED_FLAG in vars(transformers.Trainer) else "neither"
    with pytest.raises(hf_internals.UnsupportedTransformersError, match=f"training_step.*{flag}") as err:
        hf_internals.check_trainer()
    _names_the_range(err.value, "transformers")


def test_the_mixin_checks_the_trainer_before_training(monkeypatch, tmp_path, tokenizer):
    monkeypatch.setattr(transformers.Trainer, "training_step", lambda self, *args, **kwargs: None)
    with pytest.raises(hf_internals.UnsupportedTransformersError):
        _trainer(tmp_path, tokenizer)


# -- trl: TRL's private metrics ---------------------------------------------------------------------------------


def _trainer(tmp_path, tokenizer, **kwargs):
    return ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, **kwargs),
        train_dataset=helpers.dataset(8),
        processing_class=tokenizer,
    )


def _method_using(method: str, names: set[str], constants: tuple[str, ...] = ()):
    """A stand-in for an SFTTrainer method whose code uses exactly ``names`` (attributes) and ``constants``."""
    body = "".join(f"    self.{n}\n" for n in sorted(names)) + "".join(f"    {c!r}.upper()\n" for c in constants)
    namespace: dict[str, object] = {}
    exec(f"def {method}(self, *args, **kwargs):\n{body}    return None\n", namespace)  # noqa: S102
    return namespace[method]


def test_the_installed_trl_passes():
    head = trl_internals.check_sft_trainer()
    import trl.trainer.utils

    assert (head is not None) == hasattr(trl.trainer.utils, "add_fused_lm_head")


@pytest.mark.parametrize(("method", "name"), trl_internals.USES)
def test_an_sft_trainer_without_a_private_name(monkeypatch, method, name):
    uses = {n for m, n in trl_internals.USES + trl_internals.FUSED_HEAD_USES if m == method} - {name}
    monkeypatch.setattr(trl.SFTTrainer, method, _method_using(method, uses, trl_internals.CONSTANTS))
    with pytest.raises(trl_internals.UnsupportedTrlError, match=f"SFTTrainer.{method} .no longer uses '{name}'") as e:
        trl_internals.check_sft_trainer()
    _names_the_range(e.value, "trl")


@pytest.mark.parametrize("constant", ["num_tokens", "mean_token_accuracy", "position_ids"])
def test_an_sft_trainer_with_other_metric_names(monkeypatch, constant):
    uses = {n for m, n in trl_internals.USES + trl_internals.FUSED_HEAD_USES if m == "compute_loss"}
    others = tuple(c for c in trl_internals.CONSTANTS if c != constant)
    monkeypatch.setattr(trl.SFTTrainer, "compute_loss", _method_using("compute_loss", uses, others))
    with pytest.raises(trl_internals.UnsupportedTrlError, match=f"no longer uses '{constant}'"):
        trl_internals.check_sft_trainer()


def test_the_trainer_is_checked_before_sft_trainer_init(monkeypatch, tmp_path, tokenizer):
    monkeypatch.setattr(trl.SFTTrainer, "log", _method_using("log", set()))
    inits = []
    monkeypatch.setattr(trl.SFTTrainer, "__init__", lambda self, *a, **k: inits.append(1))
    with pytest.raises(trl_internals.UnsupportedTrlError, match="SFTTrainer.log .no longer uses '_metrics'"):
        _trainer(tmp_path, tokenizer)
    assert inits == []


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("_metrics", None, "_metrics, a mapping"),
        ("_metrics", {"train": {}}, "_metrics, a mapping"),
        ("_total_train_tokens", None, "_total_train_tokens, an int"),
        ("aux_loss_enabled", None, "aux_loss_enabled, a bool"),
    ],
)
def test_the_state_sft_trainer_init_leaves(tmp_path, tokenizer, attribute, value, message):
    trainer = _trainer(tmp_path, tokenizer)
    trl_internals.check_state(trainer, trainer._scale_trl_head)
    state = types.SimpleNamespace(**vars(trainer))
    if value is None:
        delattr(state, attribute)
    else:
        setattr(state, attribute, value)
    with pytest.raises(trl_internals.UnsupportedTrlError, match=message) as err:
        trl_internals.check_state(state, trainer._scale_trl_head)
    _names_the_range(err.value, "trl")


def test_trl_metrics_are_recorded_as_trl_records_them(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, max_steps=2)
    trainer.train()
    rows = [r for r in trainer.state.log_history if "scale/answer_loss" in r]
    assert len(rows) == 2
    assert all(0.0 <= r["mean_token_accuracy"] <= 1.0 and r["entropy"] > 0 for r in rows)
    assert 0 < rows[0]["num_tokens"] < rows[1]["num_tokens"] == trainer._total_train_tokens
    with pytest.raises(ValueError, match="Expected 'attention_mask' or 'position_ids'"):
        trl_internals.record_metrics(trainer, {"input_ids": torch.ones(1, 3)}, torch.tensor(3), None, None)


def test_gradient_accumulation_steps_are_read_not_assumed():
    assert trl_internals.gradient_accumulation_steps(types.SimpleNamespace(current_gradient_accumulation_steps=3)) == 3
    with pytest.raises(trl_internals.UnsupportedTrlError, match="current_gradient_accumulation_steps"):
        trl_internals.gradient_accumulation_steps(types.SimpleNamespace())


# -- trl: TRL's fused LM head -----------------------------------------------------------------------------------


@without_trl_head
def test_a_trl_from_1_16_must_add_its_fused_head(monkeypatch):
    """A TRL that calls itself 1.16 or later but whose SFTTrainer no longer adds the head we know: an error, not a
    silent switch to the conventions of older TRLs."""
    monkeypatch.setattr(trl_internals, "installed_version", lambda package: "1.16.0")
    with pytest.raises(trl_internals.UnsupportedTrlError, match="SFTTrainer.__init__ calling add_fused_lm_head"):
        trl_internals.fused_head()


@needs_trl_head
def test_trl_head_without_what_scale_reads(monkeypatch):
    import dataclasses

    import trl.trainer.utils as utils

    @dataclasses.dataclass
    class Output:
        log_probs: object = None
        label_mask: object = None

    monkeypatch.setitem(utils.add_fused_lm_head.__globals__, "FusedCausalLMOutput", Output)
    with pytest.raises(trl_internals.UnsupportedTrlError, match="FusedCausalLMOutput.entropy") as err:
        trl_internals.fused_head()
    assert "FusedCausalLMOutput.is_top1" in str(err.value)
    monkeypatch.undo()
    import trl.trainer.sft_trainer as sft

    monkeypatch.delattr(sft, "add_fused_lm_head")
    with pytest.raises(trl_internals.UnsupportedTrlError, match="sft_trainer.add_fused_lm_head"):
        trl_internals.fused_head()


@needs_trl_head
def test_trl_head_is_recognised_by_its_code_not_by_a_variable_name(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    head = trainer._scale_trl_head
    assert trainer._scale_fused_head and trl_internals.is_patched(trainer.model, head)
    other = helpers.model(tokenizer)
    assert not trl_internals.is_patched(other, head)

    def forward(self, *args, fused_lm_head=False, **kwargs):  # the name alone is not TRL's head
        return type(self).forward(self, *args, **kwargs)

    other.forward = types.MethodType(forward, other)
    assert "fused_lm_head" in forward.__code__.co_varnames and not trl_internals.is_patched(other, head)


@needs_trl_head
def test_trl_head_not_found_is_counted_and_evaluation_uses_the_logits(tmp_path, tokenizer, caplog):
    data = helpers.dataset(6, seed=2)
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, per_device_eval_batch_size=3),
        train_dataset=helpers.dataset(8),
        eval_dataset=data,
        processing_class=tokenizer,
    )
    with_head = trainer.evaluate()
    del vars(trainer.model)["forward"]  # the forward TRL installed is gone
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        trainer.scale_find_trl_head()
    assert not trainer._scale_fused_head
    assert trainer._scale_fallbacks["trl_head_not_found"] == 1
    assert sum("not the one it installs" in r.message for r in caplog.records) == 1
    without = trainer.evaluate()
    assert abs(without["eval_loss"] - with_head["eval_loss"]) <= 1e-5 * with_head["eval_loss"]
