"""Fixtures of the Axolotl adapter tests: a tiny local Qwen2 model and chain-of-thought JSONL data.

Nothing is downloaded: the tokenizer is a small SentencePiece model trained on the spot
(``scale_plugins.testing``), so ``<think>`` and ``</think>`` split into pieces like in Mistral/Gemma.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The Axolotl adapter tests need the axolotl environment (.venvs/axolotl): elsewhere, collect nothing here.
if importlib.util.find_spec("axolotl") is None:
    collect_ignore_glob = ["test_*.py"]

PLUGIN = "scale_plugins.axolotl.ScalePlugin"


def cot_samples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Short arithmetic chain-of-thought chats; think lengths vary a lot so sample != token normalization."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        value = rng.randint(1, 9)
        steps = []
        for _ in range(1 + (i % 4) * 2):
            add = rng.randint(1, 9)
            steps.append(f"{value} + {add} = {value + add}.")
            value += add
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: compute."},
                    {"role": "assistant", "content": f"<think>\n{' '.join(steps)}\n</think>\n<answer>{value}</answer>"},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scale_plugins.testing import sentencepiece_tokenizer, tiny_causal_lm

    path = tmp_path_factory.mktemp("tiny_qwen2")
    tokenizer = sentencepiece_tokenizer(path)  # also saves the tokenizer there
    tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2).save_pretrained(path)
    return path


def axolotl_config(model_dir: Path, data: Path, workdir: Path, **overrides: Any) -> dict[str, Any]:
    """A small CPU Axolotl SFT config; ``overrides`` are merged last (``None`` removes a key)."""
    cfg: dict[str, Any] = {
        "base_model": str(model_dir),
        "tokenizer_config": str(model_dir),
        "model_type": "AutoModelForCausalLM",
        "tokenizer_type": "AutoTokenizer",
        "chat_template": "tokenizer_default",
        "datasets": [
            {
                "path": str(data),
                "ds_type": "json",
                "type": "chat_template",
                "field_messages": "messages",
                "roles_to_train": ["assistant"],
            }
        ],
        "dataset_prepared_path": str(workdir / "prepared"),
        "dataset_num_proc": 1,
        "val_set_size": 0,
        "output_dir": str(workdir / "out"),
        "sequence_len": 128,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "attn_implementation": "sdpa",
        "seed": 0,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
    }
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def scale_keys(**options: Any) -> dict[str, Any]:
    """The two YAML lines, plus ``scale_<name>`` options."""
    return {"plugins": [PLUGIN], "loss": "scale", **{f"scale_{k}": v for k, v in options.items()}}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_ok(command: list[str], cwd: Path, timeout: int, env: dict[str, str] | None = None) -> str:
    """Run ``command`` (with :func:`subprocess_env` unless ``env`` is given), assert it succeeded; its output."""
    result = subprocess.run(
        command, capture_output=True, text=True, env=env or subprocess_env(), timeout=timeout, cwd=cwd
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


PYTHON = sys.executable
