"""The `scale-plugins trl-sft` entry with the shipped recipes; LoRA; gradient checkpointing."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers

ROOT = Path(__file__).parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes" / "trl").glob("*.yaml") if not p.name.startswith("grpo"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_with_trlparser(recipe):
    from scale_plugins.trl.cli import make_parser

    script_args, training_args, model_args, _ = make_parser().parse_args_and_config(
        args=["--config", str(recipe), "--use_cpu", "true"],  # the recipes ask for bf16 GPUs; validate them here on CPU
        fail_with_unknown_args=True,
    )
    assert isinstance(training_args, ScaleSFTConfig)
    options = training_args.scale_options()
    assert options.schedule == "cosine" and options.normalization == "sample"
    assert model_args.model_name_or_path and script_args.dataset_name


@pytest.mark.slow
def test_trl_sft_entry_trains_with_a_recipe(tmp_path, tokenizer):
    model_dir = helpers.save_model(tmp_path / "model", tokenizer)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    helpers.dataset(16).to_json(data_dir / "train.jsonl")
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "scale_plugins", "trl-sft", "--config", str(RECIPES[0]),
        "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--output_dir", str(out),
        "--dtype", "float32", "--max_steps", "3", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--bf16", "false", "--use_cpu", "true", "--gradient_checkpointing", "false", "--report_to", "none",
        "--logging_steps", "1", "--save_strategy", "no", "--max_length", "192", "--scale_schedule", "linear",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SCALe SFT done" in proc.stdout
    assert (out / "model.safetensors").exists()


def test_lora_and_gradient_checkpointing(tmp_path, tokenizer):
    from peft import LoraConfig

    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=2, gradient_checkpointing=True),
        train_dataset=helpers.dataset(8),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    import trl.trainer.utils

    # where TRL has the fused LM head (1.16+), it survives PEFT wrapping
    assert trainer._scale_fused_head == hasattr(trl.trainer.utils, "add_fused_lm_head")
    trainer.train()
    rows = [r for r in trainer.state.log_history if "scale/answer_loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)


def _has_trl_fused_head() -> bool:
    import trl.trainer.utils

    return hasattr(trl.trainer.utils, "add_fused_lm_head")


def test_training_runs_scales_own_fused_head(tmp_path, tokenizer, monkeypatch):
    """Training never asks TRL's fused LM head (where TRL has one) and never builds the logits: the loss is SCALe's
    fused linear + weighted CE (hf.head), once per micro-batch; nothing fell back to the logits path."""
    import scale_plugins.hf.head as head

    calls = {"fused": 0, "trl_head": 0}
    fused = head.fused_linear_weighted_ce

    def counting(*args, **kwargs):
        calls["fused"] += 1
        return fused(*args, **kwargs)

    monkeypatch.setattr(head, "fused_linear_weighted_ce", counting)
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=2, gradient_accumulation_steps=2),
        train_dataset=helpers.dataset(16),
        processing_class=tokenizer,
    )
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        calls["trl_head"] += bool(kwargs.get("fused_lm_head"))
        return forward(*args, **kwargs)

    trainer.model.forward = spy
    trainer.train()
    assert calls == {"fused": 4, "trl_head": 0}  # 2 steps x 2 micro-batches
    assert not dict(getattr(trainer, "_scale_fallbacks", {}) or {}).get("logits_path")


def test_scales_head_equals_trls_fused_head(tmp_path, tokenizer):
    """TRL >= 1.16: SCALe's fused head (training) and the log-probs of TRL's fused head (evaluation) give the same
    SCALe loss and gradient at the schedule's start (weights 0.9 / 0.1, not the stock loss)."""
    if not _has_trl_fused_head():
        pytest.skip("this TRL has no fused LM head")
    from .test_trainer import assert_same_grads, one_step

    data = helpers.dataset(8)
    ours, theirs = (
        ScaleSFTTrainer(
            model=helpers.model(tokenizer),
            args=helpers.config(ScaleSFTConfig, tmp_path / name),
            train_dataset=data,
            processing_class=tokenizer,
        )
        for name in ("ours", "theirs")
    )
    trl_head = theirs._trl_head_loss
    theirs.scale_per_token_loss = lambda model, inputs, segments, weights: trl_head(
        model, {**inputs, "use_cache": False}, weights
    )
    loss_a, grads_a = one_step(ours)
    loss_b, grads_b = one_step(theirs)
    assert math.isclose(loss_a, loss_b, rel_tol=1e-5)
    assert_same_grads(grads_a, grads_b, atol=1e-6, rtol=1e-4)
