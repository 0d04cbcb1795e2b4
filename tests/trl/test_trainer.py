"""ScaleSFTTrainer end to end: logs, data errors, refusals, mixed data.

The contract (equal weights == stock SFTTrainer, gradient accumulation, packing, resume, a refused mode) is
tests/trl/test_contract.py; ``one_step`` / ``assert_same_grads`` / ``EQUAL`` are shared with other TRL tests."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from trl import SFTConfig

from scale_plugins.core import ScaleConfigError, ScaleOptions, answer_weight
from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers

EQUAL = dict(scale_schedule="constant", scale_answer_weight_start=0.5, scale_normalization="token")


def one_step(trainer, num_batches: int = 1):
    """Loss and gradients of the first optimizer step, through the trainer's own machinery."""
    model = trainer.model
    model.train()
    batches, num_items = trainer.get_batch_samples(
        iter(trainer.get_train_dataloader()), num_batches, trainer.args.device
    )
    total = 0.0
    for batch in batches:
        trainer.current_gradient_accumulation_steps = len(batches)
        loss = trainer.training_step(model, batch, num_items)
        total += float(loss)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total, grads


def assert_same_grads(a, b, atol=1e-6, rtol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=rtol), name


def test_end_to_end_logs_follow_the_schedule(tmp_path, tokenizer):
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=5),
        train_dataset=helpers.dataset(20),
        processing_class=tokenizer,
    )
    trainer.train()
    rows = [r for r in trainer.state.log_history if "scale/answer_weight" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    options = ScaleOptions()
    for r in rows:
        assert math.isclose(r["scale/answer_weight"], answer_weight(r["step"] - 1, 5, options), rel_tol=1e-9)
        assert math.isclose(r["scale/think_weight"] + r["scale/answer_weight"], 1.0)
        assert r["scale/think_tokens"] > 0 and r["scale/answer_tokens"] > 0
        assert math.isfinite(r["scale/think_loss"]) and math.isfinite(r["scale/answer_loss"])
        # the logged loss is the SCALe mix of the logged segment losses
        mix = r["scale/think_weight"] * r["scale/think_loss"] + r["scale/answer_weight"] * r["scale/answer_loss"]
        assert math.isclose(r["loss"], mix, rel_tol=1e-4)
        assert "entropy" in r and "mean_token_accuracy" in r  # TRL's own metrics still work


def test_missing_think_tags_warn_once_and_are_counted(tmp_path, tokenizer, caplog):
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=3),
        train_dataset=helpers.dataset(12, think=False),
        processing_class=tokenizer,
    )
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        trainer.train()
    warnings = [r for r in caplog.records if "no '<think>'" in r.getMessage()]
    assert len(warnings) == 1
    last = [r for r in trainer.state.log_history if "scale/steps_without_think" in r][-1]
    assert last["scale/steps_without_think"] == 3
    assert all(math.isfinite(r["loss"]) for r in trainer.state.log_history if "loss" in r)


def test_missing_think_tags_can_be_an_error(tmp_path, tokenizer):
    from scale_plugins.hf import ScaleDataError

    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, scale_on_missing_think="error"),
        train_dataset=helpers.dataset(8, think=False),
        processing_class=tokenizer,
    )
    with pytest.raises(ScaleDataError, match="scale_on_missing_think=error"):
        trainer.train()


def test_config_validation_names_the_key(tmp_path):
    with pytest.raises(ScaleConfigError, match="scale_answer_weight_end"):
        helpers.config(ScaleSFTConfig, tmp_path, scale_answer_weight_end=2.0)
    with pytest.raises(ScaleConfigError, match="scale_schedule"):
        helpers.config(ScaleSFTConfig, tmp_path, scale_schedule="exp")
    with pytest.raises(ScaleConfigError, match="loss_type"):
        helpers.config(ScaleSFTConfig, tmp_path, loss_type="dft")


def test_plain_sftconfig_is_refused(tmp_path, tokenizer):
    with pytest.raises(ScaleConfigError, match="ScaleSFTConfig"):
        ScaleSFTTrainer(
            model=helpers.model(tokenizer),
            args=helpers.config(SFTConfig, tmp_path),
            train_dataset=helpers.dataset(4),
            processing_class=tokenizer,
        )


def test_args_none_trains_with_the_scale_defaults(tmp_path, tokenizer, monkeypatch):
    """args=None: like SFTTrainer (which builds SFTConfig("<model>-SFT")), a ScaleSFTConfig with SCALe's defaults."""
    import scale_plugins.trl.trainer as trainer_module

    class CpuDefaults(ScaleSFTConfig):  # TRL's defaults want bf16 on a GPU, for SFTTrainer(args=None) too
        def __init__(self, *args, **kwargs):
            super().__init__(*args, use_cpu=True, bf16=False, report_to=[], **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer_module, "ScaleSFTConfig", CpuDefaults)
    model = helpers.model(tokenizer)
    model.config._name_or_path = "org/tiny-model"
    trainer = ScaleSFTTrainer(model=model, train_dataset=helpers.dataset(4), processing_class=tokenizer)
    assert isinstance(trainer.args, ScaleSFTConfig)
    assert trainer.scale_options == ScaleOptions()
    assert trainer.args.output_dir.endswith("tiny-model-SFT")
    assert trainer.scale_tagger is not None


def test_tensor_and_context_parallelism_are_refused(tmp_path, tokenizer):
    """They shard a sample's tokens over ranks: the step counts and per-sample means would be wrong."""
    from types import SimpleNamespace

    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path),
        train_dataset=helpers.dataset(4),
        processing_class=tokenizer,
    )
    trainer._scale_check_parallelism()  # plain data parallelism: fine
    for sizes in ({"cp_size": 2}, {"tp_size": 2}, {"sp_size": 4}):
        config = SimpleNamespace(**{"tp_size": 1, "cp_size": 1, "sp_size": 1, **sizes})
        trainer.accelerator = SimpleNamespace(parallelism_config=config)
        with pytest.raises(ScaleConfigError, match=f"{next(iter(sizes))}={next(iter(sizes.values()))}"):
            trainer._scale_check_parallelism()


def test_bf16_loss_is_logged_in_float32(tmp_path, tokenizer):
    """bf16 autocast: the loss is not rounded to bf16 (15.6875 for 15.6846): it equals the float32 mix of the
    logged segment losses to float32 precision."""
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=2, bf16=True),
        train_dataset=helpers.dataset(8),
        processing_class=tokenizer,
    )
    trainer.train()
    rows = [r for r in trainer.state.log_history if "scale/answer_weight" in r]
    assert rows
    for r in rows:
        mix = r["scale/think_weight"] * r["scale/think_loss"] + r["scale/answer_weight"] * r["scale/answer_loss"]
        assert r["loss"] == pytest.approx(mix, rel=2e-6), (r["loss"], mix)


@pytest.mark.parametrize("policy", ["ignore", "think"])
def test_empty_think_blocks_in_mixed_data(tmp_path, tokenizer, policy):
    """Qwen3-style mixed data: traces and empty '<think>\\n\\n</think>\\n\\n' blocks. 'ignore' (the default) leaves
    the empty blocks out of every segment and counts them; 'think' trains them as think."""
    import datasets

    rows = []
    for k, row in enumerate(helpers.dataset(8)):
        content = row["completion"][0]["content"]
        if k % 2:
            content = "<think>\n\n</think>\n\n" + content[content.index("<answer>") :]
        rows.append({"prompt": row["prompt"], "completion": [{"role": "assistant", "content": content}]})
    data = datasets.Dataset.from_list(rows)
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, per_device_train_batch_size=8, scale_empty_think=policy),
        train_dataset=data,
        processing_class=tokenizer,
    )
    batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)
    segments = batches[0]["scale_segments"]
    think_rows = int((segments.segment_ids == 1).any(dim=1).sum())
    supervised = batches[0]["labels"][:, 1:] != -100
    in_segments = (segments.segment_ids[:, :-1] > 0) == supervised
    if policy == "ignore":
        assert think_rows == 4 and trainer.scale_tagger.empty_think_blocks == 4
        assert not bool(in_segments.all())  # the empty blocks' tokens are supervised but in no segment
        assert trainer._scale_step_counts[0, 1] == 4  # think samples of the step: the 4 real traces
    else:
        assert think_rows == 8 and trainer.scale_tagger.empty_think_blocks == 0
        assert bool(in_segments.all())
        assert trainer._scale_step_counts[0, 1] == 8
    trainer.train()
    logged = [r for r in trainer.state.log_history if "scale/answer_weight" in r]
    assert ("scale/empty_think_blocks" in logged[-1]) == (policy == "ignore")


def test_closing_tag_as_answer_through_the_trainer(tmp_path, tokenizer):
    """scale_think_close_segment='answer': the trainer's batches carry the closer's tokens in the answer segment,
    the other tokens where 'think' puts them, and the step's SCALe loss is built from those segments."""
    import datasets

    data = datasets.Dataset.from_list(helpers.dataset(8))
    segments = {}
    for setting in ("think", "answer"):
        trainer = ScaleSFTTrainer(
            model=helpers.model(tokenizer),
            args=helpers.config(
                ScaleSFTConfig, tmp_path / setting, per_device_train_batch_size=8, scale_think_close_segment=setting
            ),
            train_dataset=data,
            processing_class=tokenizer,
        )
        assert trainer.scale_options.think_close_segment == setting
        batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)
        segments[setting] = batches[0]["scale_segments"].segment_ids
        targets = batches[0]["labels"][:, 1:]
    moved = segments["think"] != segments["answer"]
    assert bool(moved.any())
    assert bool((segments["think"][moved] == 1).all()) and bool((segments["answer"][moved] == 2).all())
    closer = tokenizer.decode(targets[moved[:, :-1]][: int(moved[0].sum())])
    assert "think>" in closer and "<think" not in closer, closer
    # every trace keeps its other think tokens
    assert bool(((segments["answer"] == 1).sum(dim=1) == (segments["think"] == 1).sum(dim=1) - moved.sum(dim=1)).all())
    trainer.train()
    assert all(math.isfinite(r["loss"]) for r in trainer.state.log_history if "loss" in r)


def test_closing_tag_as_its_own_segment_through_the_trainer(tmp_path, tokenizer):
    """scale_think_close_segment='own' with scale_close_weight: the closer's tokens (the ones 'answer' moves) are
    segment 3, and training logs the segment 'close' with its constant weight next to think and answer."""
    import datasets

    data = datasets.Dataset.from_list(helpers.dataset(8))
    segments, trainers = {}, {}
    for setting, extra in (("answer", {}), ("own", {"scale_close_weight": 0.25})):
        trainer = ScaleSFTTrainer(
            model=helpers.model(tokenizer),
            args=helpers.config(
                ScaleSFTConfig,
                tmp_path / setting,
                per_device_train_batch_size=8,
                max_steps=2,
                logging_steps=1,
                scale_think_close_segment=setting,
                **extra,
            ),
            train_dataset=data,
            processing_class=tokenizer,
        )
        batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)
        segments[setting], trainers[setting] = batches[0]["scale_segments"].segment_ids, trainer
    moved = segments["answer"] != segments["own"]
    assert (
        bool(moved.any()) and bool((segments["own"][moved] == 3).all()) and bool((segments["answer"][moved] == 2).all())
    )
    trainer = trainers["own"]
    trainer.train()
    logged = [r for r in trainer.state.log_history if "scale/close_loss" in r]
    assert len(logged) == 2 and all(r["scale/close_weight"] == 0.25 and r["scale/close_tokens"] > 0 for r in logged)
    assert all(math.isfinite(r["scale/close_loss"]) and "scale/answer_loss" in r for r in logged)
