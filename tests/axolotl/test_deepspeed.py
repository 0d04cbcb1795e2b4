"""DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-3 with CPU offload (the shipped recipes/deepspeed configs) through Axolotl,
2 CPU processes over gloo: the first optimizer step equals the single-process step on the same 8 samples
(2 ranks x micro-batch 2 x accumulation 2 == 1 x 8).

Needs deepspeed in the environment (``DS_BUILD_OPS=0 pip install deepspeed``); the CPU-only plumbing
is in ``run_axolotl.py --cpu-distributed`` (not needed on GPUs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import PYTHON, axolotl_config, cot_samples, run_ok, scale_keys, subprocess_env, write_jsonl

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)")

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

DRIVER = Path(__file__).with_name("run_axolotl.py")


def first_step(command: list[str], runs: dict[str, Any], workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    spec, out = workdir / "runs.json", workdir / "results.json"
    spec.write_text(json.dumps(runs))
    distributed = ["--cpu-distributed"] if "torchrun" in command[0] else []
    output = run_ok([*command, str(DRIVER), str(spec), str(out), *distributed], workdir, 300, env=env)
    (run,) = json.loads(out.read_text()).values()
    # the loss came from SCALe's fused head (scale_plugins.hf.head), never from the [B, T, V] logits: the fallback
    # is neither logged nor counted (`scale/logits_path`)
    assert "logits_path" not in output, output[-3000:]
    assert not any("scale/logits_path" in entry for entry in run["log_history"]), run["log_history"]
    return {**run, **next(entry for entry in run["log_history"] if "loss" in entry)}


RECIPES = Path(__file__).parents[2] / "recipes" / "deepspeed"


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload"])
def test_zero_two_processes_equal_one_process(tiny_model_dir, tmp_path, stage):
    """The shipped recipes/deepspeed configs, unchanged, through Axolotl with SCALe on 2 CPU processes."""
    data = write_jsonl(tmp_path / "cot8.jsonl", cot_samples(8))
    single = first_step(
        [PYTHON],
        {"single": axolotl_config(tiny_model_dir, data, tmp_path / "single", micro_batch_size=8, **scale_keys())},
        tmp_path,
        subprocess_env(),
    )
    ds_config = axolotl_config(
        tiny_model_dir,
        data,
        tmp_path / stage,
        micro_batch_size=2,
        gradient_accumulation_steps=2,
        deepspeed=json.loads((RECIPES / f"{stage}.json").read_text()),
        **scale_keys(),
    )
    env = {**subprocess_env(), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(PYTHON).with_name("torchrun"))
    ds = first_step([torchrun, "--nproc_per_node", "2"], {stage: ds_config}, tmp_path, env)

    assert ds["trainer"] == "ScaleAxolotlTrainer" and ds["num_processes"] == 2
    assert ds["distributed_type"] == "DistributedType.DEEPSPEED"
    assert ds["tokens/trainable"] == single["tokens/trainable"]  # the same 8 samples, split over the ranks
    assert ds["loss"] == pytest.approx(single["loss"], abs=1e-5)
    assert ds["grad_norm"] == pytest.approx(single["grad_norm"], abs=1e-5)
    for key in ("scale/think_loss", "scale/answer_loss", "scale/think_tokens", "scale/answer_tokens"):
        assert ds[key] == pytest.approx(single[key], abs=1e-5), key
