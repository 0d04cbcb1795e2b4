"""Tiny local fixtures and small runners for the LLaMA-Factory adapter tests (offline, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scale_plugins.data import synthetic_cot

DATASET = "cot"
CLI = str(Path(sys.executable).with_name("scale-llamafactory"))


@dataclass(frozen=True)
class TinySetup:
    model: Path
    dataset_dir: Path


def make_tiny_setup(root: Path, samples: int = 16) -> TinySetup:
    from scale_plugins.testing import bpe_tokenizer, tiny_causal_lm

    tokenizer = bpe_tokenizer()
    model_dir, data_dir = root / "model", root / "data"
    tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir.mkdir()
    # Short traces (1-2 operations): every sample fits in cutoff_len 128, nothing is truncated.
    rows = [
        {"instruction": s["messages"][0]["content"], "input": "", "output": s["messages"][1]["content"]}
        for s in synthetic_cot(samples, seed=0, min_ops=1, max_ops=2)
    ]
    (data_dir / "cot.json").write_text(json.dumps(rows))
    (data_dir / "dataset_info.json").write_text(json.dumps({DATASET: {"file_name": "cot.json"}}))
    return TinySetup(model_dir, data_dir)


def train_config(tiny: TinySetup, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A full-finetuning SFT config of a few CPU steps; ``overrides`` win (None removes a key)."""
    config: dict[str, Any] = {
        "model_name_or_path": str(tiny.model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": DATASET,
        "dataset_dir": str(tiny.dataset_dir),
        "template": "chatml",
        "cutoff_len": 128,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 2,
        "learning_rate": 1.0e-3,
        "lr_scheduler_type": "constant",
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "use_scale_loss": True,
    }
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "LLAMAFACTORY_VERBOSITY": "INFO", **(env or {})}
    return subprocess.run([CLI, *args], env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


def train_in_process(config: dict[str, Any], callbacks: list[Any] | None = None) -> list[dict[str, Any]]:
    """Train through LLaMA-Factory's (patched) ``run_exp`` in this process; the per-step training logs."""
    from llamafactory.train.tuner import run_exp

    run_exp(dict(config), callbacks=list(callbacks or []))
    return step_logs(Path(config["output_dir"]))


def json_state(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "trainer_state.json").read_text())


def step_logs(output_dir: Path) -> list[dict[str, Any]]:
    """The per-step training entries of ``trainer_state.json``'s log history (no summary, no evaluation)."""
    return [entry for entry in json_state(output_dir)["log_history"] if "loss" in entry]
