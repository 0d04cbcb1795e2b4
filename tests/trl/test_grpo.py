"""The TRL GRPO follow-up recipe runs 2 steps on a tiny model on CPU with our reward functions."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from scale_plugins.data import synthetic_cot

from . import helpers

# The recipe is written for TRL 1.x's GRPOConfig (the TRL environment). LLaMA-Factory's environment pins trl 0.24,
# whose GRPOTrainer does not even import there (its callbacks import mergekit); docs/recipes.md sends LLaMA-Factory
# users to the TRL environment for GRPO.
if int(importlib.metadata.version("trl").split(".")[0]) < 1:
    pytest.skip("the TRL GRPO recipe targets TRL 1.x", allow_module_level=True)

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "recipes" / "trl" / "grpo_from_scale_sft.yaml"


def test_recipe_parses():
    from trl import GRPOConfig, ModelConfig, TrlParser
    from trl.scripts.grpo import GRPOScriptArguments

    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig))
    script_args, config, _ = parser.parse_args_and_config(
        args=["--config", str(RECIPE), "--use_cpu", "true"], fail_with_unknown_args=True
    )
    assert script_args.reward_funcs == ["scale_plugins.rewards.format_reward", "scale_plugins.rewards.accuracy_reward"]
    assert config.num_generations == 8 and config.use_vllm


@pytest.mark.slow
def test_grpo_recipe_two_steps_on_cpu(tmp_path, tokenizer):
    model_dir = helpers.save_model(tmp_path / "sft", tokenizer)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = [{"prompt": [s["messages"][0]], "solution": s["solution"]} for s in synthetic_cot(16, seed=5)]
    datasets.Dataset.from_list(rows).to_json(data_dir / "train.jsonl")
    out = tmp_path / "out"
    cmd = [
        str(Path(sys.executable).parent / "trl"), "grpo", "--config", str(RECIPE),
        "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--output_dir", str(out),
        "--dtype", "float32", "--use_vllm", "false", "--use_cpu", "true", "--bf16", "false",
        "--gradient_checkpointing", "false", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--gradient_accumulation_steps", "1", "--num_generations", "4", "--max_completion_length", "24",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--log_completions", "false",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = (
        json.loads(next(out.rglob("trainer_state.json")).read_text()) if list(out.rglob("trainer_state.json")) else None
    )
    logs = (
        state["log_history"]
        if state
        else [json.loads(line.replace("'", '"')) for line in proc.stdout.splitlines() if line.startswith("{'loss'")]
    )
    keys = set().union(*logs)
    assert "rewards/format_reward/mean" in keys and "rewards/accuracy_reward/mean" in keys, keys
