"""End-to-end Axolotl training with `loss: scale` on a tiny local Qwen2 model (CPU, a few steps).

- `axolotl train cfg.yml` (the real command) trains with SCALe: the logged weights follow the schedule,
  the segment losses are logged, and the logged loss is their weighted sum, i.e. SCALe is what trained;
- without the plugin, `axolotl train` stops before training.

The contract (equal weights == the stock loss, gradient accumulation, packing, resume, a refused mode) is
tests/axolotl/test_contract.py.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scale_plugins.core import ScaleOptions, segment_weights

from .conftest import PLUGIN, PYTHON, axolotl_config, cot_samples, scale_keys, subprocess_env, write_jsonl

pytestmark = pytest.mark.slow

AXOLOTL = str(Path(PYTHON).with_name("axolotl"))


def axolotl_train(config: dict[str, Any], workdir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [AXOLOTL, "train", str(path), "--launcher", "python"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
        cwd=workdir,
    )


def train_logs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in history if "loss" in entry]


# -- the real command ------------------------------------------------------------------------------------

MAX_STEPS = 4


@pytest.fixture(scope="module")
def cli_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    workdir = tmp_path_factory.mktemp("cli_run")
    data = write_jsonl(workdir / "cot.jsonl", cot_samples(20, seed=1))
    config = axolotl_config(
        tiny_model_dir,
        data,
        workdir,
        max_steps=MAX_STEPS,
        micro_batch_size=2,
        gradient_accumulation_steps=2,
        val_set_size=0.2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=MAX_STEPS,
        **scale_keys(schedule="cosine"),
    )
    result = axolotl_train(config, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    state = json.loads((workdir / "out" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    return result, state["log_history"]


def test_cli_train_reports_scale_active(cli_run):
    result, _ = cli_run
    output = result.stdout + result.stderr
    assert "Plugin loaded successfully: " + PLUGIN in output
    assert "SCALe active: ScaleAxolotlTrainer" in output


def test_cli_train_weights_follow_the_schedule(cli_run):
    _, history = cli_run
    logs = train_logs(history)
    assert [entry["step"] for entry in logs] == list(range(1, MAX_STEPS + 1))
    for entry in logs:
        # the weights of optimizer step k are those of global_step k - 1 (logged once the step is done)
        think, answer = segment_weights(entry["step"] - 1, MAX_STEPS, ScaleOptions(schedule="cosine"))
        assert entry["scale/answer_weight"] == pytest.approx(answer, abs=1e-12)
        assert entry["scale/think_weight"] == pytest.approx(think, abs=1e-12)
    answers = [entry["scale/answer_weight"] for entry in logs]
    assert answers[0] == pytest.approx(0.1) and answers == sorted(answers) and answers[-1] > 0.5


def test_cli_train_loss_is_the_weighted_sum_of_the_segment_losses(cli_run):
    _, history = cli_run
    for entry in train_logs(history):
        think, answer = entry["scale/think_loss"], entry["scale/answer_loss"]
        assert math.isfinite(think) and math.isfinite(answer) and think > 0 and answer > 0
        assert entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0
        combined = entry["scale/think_weight"] * think + entry["scale/answer_weight"] * answer
        # the stock loss is the token mean, far from this combination: think tokens outnumber answer tokens
        assert entry["loss"] == pytest.approx(combined, abs=1e-5)


def test_cli_train_keeps_axolotl_metrics_and_evaluates_with_scale(cli_run):
    _, history = cli_run
    for entry in train_logs(history):
        assert entry["tokens/trainable"] > 0 and "ppl" in entry and "grad_norm" in entry
    evals = [entry for entry in history if "eval_loss" in entry]
    assert {2, 4} <= {entry["step"] for entry in evals}  # (Axolotl also evaluates before the first step)
    for entry in evals:
        assert math.isfinite(entry["eval_scale/think_loss"]) and math.isfinite(entry["eval_scale/answer_loss"])


def test_cli_train_without_the_plugin_stops_before_training(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "cot.jsonl", cot_samples(4))
    result = axolotl_train(axolotl_config(tiny_model_dir, data, tmp_path, loss="scale"), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ScalePluginNotActiveError" in output and f"plugins:\n  - {PLUGIN}" in output
    assert "Starting trainer" not in output
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_train_with_misspelled_scale_keys_stops_before_training(tiny_model_dir, tmp_path):
    """Axolotl would drop the misspelled keys and train with the defaults: the plugin's validation stops it."""
    data = write_jsonl(tmp_path / "cot.jsonl", cot_samples(4))
    keys = {**scale_keys(), "scale_schedul": "linear", "scale_answer_weight_ennd": 0.9}
    result = axolotl_train(axolotl_config(tiny_model_dir, data, tmp_path, **keys), tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "scale_schedul: unknown SCALe key; did you mean `scale_schedule`?" in output
    assert "scale_answer_weight_ennd: unknown SCALe key; did you mean `scale_answer_weight_end`?" in output
    assert "Starting trainer" not in output
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_cli_train_with_assistant_turns_only_does_not_report_a_trained_prompt(cli_run):
    result, history = cli_run
    assert "the prompt is weighed as answer" not in result.stdout + result.stderr
    assert all("scale/steps_with_supervised_prompt" not in entry for entry in history)


def test_cli_train_on_inputs_reports_the_trained_prompt_once_with_the_fix(tiny_model_dir, tmp_path):
    """`train_on_inputs: true` supervises the user turns, which SCALe would weigh as answer: warned once, with the
    Axolotl settings that fix it."""
    data = write_jsonl(tmp_path / "cot.jsonl", cot_samples(8))
    config = axolotl_config(tiny_model_dir, data, tmp_path, max_steps=2, train_on_inputs=True, **scale_keys())
    result = axolotl_train(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    warnings = [line for line in output.splitlines() if "the prompt is weighed as answer" in line]
    assert len(warnings) == 1, warnings
    assert "trains prompt tokens (train_on_inputs: true)" in warnings[0] and "train_on_inputs: false" in warnings[0]
