"""End-to-end Axolotl training with `loss: scale` on a tiny local Qwen2 model (CPU, a few steps).

- `axolotl train cfg.yml` (the real command) trains with SCALe: the logged weights follow the schedule,
  the segment losses are logged, and the logged loss is their weighted sum, i.e. SCALe is what trained;
- without the plugin, `axolotl train` stops before training;
- exactness, first optimizer step on the same 4 samples, through Axolotl's Python API:
  equal weights + token normalization == the stock loss; packing on == off; batch 4 x GA 1 == 2 x GA 2.
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

from .conftest import PLUGIN, PYTHON, axolotl_config, cot_samples, run_ok, scale_keys, subprocess_env, write_jsonl

pytestmark = pytest.mark.slow

AXOLOTL = str(Path(PYTHON).with_name("axolotl"))
DRIVER = Path(__file__).with_name("run_axolotl.py")


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
    assert "scale_schedul: not a SCALe option; did you mean `scale_schedule`?" in output
    assert "scale_answer_weight_ennd: not a SCALe option; did you mean `scale_answer_weight_end`?" in output
    assert "Starting trainer" not in output
    assert not (tmp_path / "out" / "model.safetensors").exists()


# -- exactness: the first optimizer step on the same 4 samples -------------------------------------------


@pytest.fixture(scope="module")
def first_steps(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """First-step logs of several runs on the same 4 samples (one process; one optimizer step each)."""
    workdir = tmp_path_factory.mktemp("first_steps")
    data = write_jsonl(workdir / "cot4.jsonl", cot_samples(4))

    def config(name: str, **overrides: Any) -> dict[str, Any]:
        return axolotl_config(tiny_model_dir, data, workdir / name, **overrides)

    equal = scale_keys(schedule="constant", answer_weight_start=0.5, normalization="token")
    runs = {
        "stock": config("stock", micro_batch_size=4),
        "equal_weights_token": config("equal", micro_batch_size=4, **equal),
        "scale_b4_ga1": config("b4", micro_batch_size=4, **scale_keys()),
        "scale_b2_ga2": config("b2", micro_batch_size=2, gradient_accumulation_steps=2, **scale_keys()),
        # all 4 samples in one packed row of 512 tokens
        "scale_packed": config("packed", micro_batch_size=1, sample_packing=True, sequence_len=512, **scale_keys()),
    }
    spec, out = workdir / "runs.json", workdir / "results.json"
    spec.write_text(json.dumps(runs))
    run_ok([PYTHON, str(DRIVER), str(spec), str(out)], workdir, 420)
    results = json.loads(out.read_text())
    return {name: {"trainer": r["trainer"], **train_logs(r["log_history"])[0]} for name, r in results.items()}


def test_first_steps_use_the_expected_trainers_on_the_same_tokens(first_steps):
    assert first_steps["stock"]["trainer"] == "AxolotlTrainer"
    assert "scale/answer_weight" not in first_steps["stock"]
    for name, step in first_steps.items():
        assert step["step"] == 1
        assert step["tokens/trainable"] == first_steps["stock"]["tokens/trainable"], name
        if name != "stock":
            assert step["trainer"] == "ScaleAxolotlTrainer", name


def test_equal_weights_with_token_normalization_give_the_stock_loss(first_steps):
    stock, equal = first_steps["stock"], first_steps["equal_weights_token"]
    assert equal["scale/answer_weight"] == 0.5 and equal["scale/think_weight"] == 0.5
    assert equal["loss"] == pytest.approx(stock["loss"], abs=1e-5)
    assert equal["grad_norm"] == pytest.approx(stock["grad_norm"], abs=1e-5)


def test_default_scale_loss_differs_from_the_stock_loss(first_steps):
    """The comparisons below would be vacuous if SCALe trained the stock loss."""
    assert abs(first_steps["scale_b4_ga1"]["loss"] - first_steps["stock"]["loss"]) > 1e-3


def test_packing_gives_the_same_first_step(first_steps):
    packed, padded = first_steps["scale_packed"], first_steps["scale_b4_ga1"]
    assert packed["tokens/total"] == 512  # one packed row
    assert packed["loss"] == pytest.approx(padded["loss"], abs=1e-5)
    assert packed["grad_norm"] == pytest.approx(padded["grad_norm"], abs=1e-5)
    for key in ("scale/think_loss", "scale/answer_loss", "scale/think_tokens", "scale/answer_tokens"):
        assert packed[key] == pytest.approx(padded[key], abs=1e-5), key


def test_gradient_accumulation_is_exact(first_steps):
    accumulated, whole = first_steps["scale_b2_ga2"], first_steps["scale_b4_ga1"]
    assert accumulated["loss"] == pytest.approx(whole["loss"], abs=1e-5)
    assert accumulated["grad_norm"] == pytest.approx(whole["grad_norm"], abs=1e-5)
    for key in ("scale/think_loss", "scale/answer_loss"):
        assert accumulated[key] == pytest.approx(whole[key], abs=1e-5), key
