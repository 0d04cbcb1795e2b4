"""Data parallelism and DeepSpeed ZeRO with 2 CPU processes over gloo == one process with the whole batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
HERE = Path(__file__).parent
RECIPES = HERE.parents[1] / "recipes" / "deepspeed"


@pytest.fixture(scope="module")
def reference(tokenizer, tmp_path_factory):
    out = {}
    for normalization in ("sample", "token"):
        config = helpers.config(
            ScaleSFTConfig,
            tmp_path_factory.mktemp(normalization),
            per_device_train_batch_size=8,
            max_steps=1,
            scale_normalization=normalization,
            per_device_eval_batch_size=3,  # not the 2 ranks x 2 of dist_train.py: eval metrics must not care
        )
        trainer = ScaleSFTTrainer(
            model=helpers.model(tokenizer), args=config, train_dataset=helpers.dataset(8), processing_class=tokenizer
        )
        trainer.train()
        assert not any("scale/logits_path" in r for r in trainer.state.log_history), trainer.state.log_history
        row = next(r for r in trainer.state.log_history if "scale/answer_weight" in r)
        out[normalization] = {
            "loss": row["loss"],
            "grad_norm": float(row["grad_norm"]),
            "answer_loss": row["scale/answer_loss"],
            "think_loss": row["scale/think_loss"],
            **{
                key: value
                for key, value in trainer.evaluate(helpers.dataset(8, seed=7)).items()
                if key in helpers.EVAL_KEYS
            },
        }
    return out


def launch(tmp_path, *extra: str, env: dict | None = None) -> dict:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(HERE / "dist_train.py"),
        str(out),
        *extra,
    ]
    # DeepSpeed JIT-builds its CPU shared-memory comm op into TORCH_EXTENSIONS_DIR: keep one cache per
    # virtualenv, or two DeepSpeed versions (the trl and axolotl envs) overwrite each other's build.
    extensions = str(Path(sys.prefix) / "torch_extensions")
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": extensions,
        **(env or {}),
    }
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600, cwd=HERE.parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # no rank fell back to the [B, T, V] logits (TRL's fused LM head, or SCALe's own on TRL without it): the
    # fallback is logged once with its counter's name, `scale/logits_path`
    assert "logits_path" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_match(got: dict, want: dict) -> None:
    for normalization in ("sample", "token"):
        for key in ("loss", "grad_norm", "answer_loss", "think_loss", *helpers.EVAL_KEYS):
            assert math.isclose(got[normalization][key], want[normalization][key], rel_tol=1e-5), (
                normalization,
                key,
                got,
                want,
            )


def test_ddp_two_ranks_two_micro_batches(tmp_path, reference):
    assert_match(launch(tmp_path), reference)


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_zero_cpu(tmp_path, reference, stage):
    pytest.importorskip("deepspeed")
    got = launch(
        tmp_path, "--deepspeed", str(RECIPES / f"{stage}.json"), env={"DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"}
    )
    assert_match(got, reference)
