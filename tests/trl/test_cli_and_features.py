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


def test_logits_fallback_equals_fused_head(tmp_path, tokenizer):
    """TRL versions without the fused LM head use the core's chunked CE over logits: same loss and gradient."""
    from .test_trainer import assert_same_grads, one_step

    data = helpers.dataset(8)
    fused = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path / "a"),
        train_dataset=data,
        processing_class=tokenizer,
    )
    chunked = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path / "b"),
        train_dataset=data,
        processing_class=tokenizer,
    )
    chunked._scale_fused_head = False
    loss_a, grads_a = one_step(fused)
    loss_b, grads_b = one_step(chunked)
    assert math.isclose(loss_a, loss_b, rel_tol=1e-5)
    assert_same_grads(grads_a, grads_b, atol=1e-6, rtol=1e-4)
