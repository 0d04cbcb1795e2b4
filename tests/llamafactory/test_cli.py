"""``scale-llamafactory``: the real command, in subprocesses (a train run, errors). Its torchrun / DeepSpeed runs
are the contract's two-process runs (``test_contract.py``)."""

from __future__ import annotations

import json

import pytest

from scale_plugins.core import ScaleOptions, answer_weight, option_fields

from .helpers import run_cli, step_logs, train_config, write_yaml


@pytest.mark.slow
def test_train_command_trains_with_scale_and_logs_the_schedule(tiny, tmp_path):
    out = tmp_path / "out"
    schedule = dict(scale_schedule="linear", scale_answer_weight_start=0.2, scale_answer_weight_end=0.6)
    config = write_yaml(tmp_path / "train.yaml", train_config(tiny, out, max_steps=4, **schedule))
    result = run_cli("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SCALe loss active on rank 0 of 1 (ScaleSeq2SeqTrainer)" in result.stdout + result.stderr

    logs = step_logs(out)
    options = ScaleOptions(schedule="linear", answer_weight_start=0.2, answer_weight_end=0.6)
    expected = [answer_weight(step, 4, options) for step in range(4)]  # the weight used in step k+1
    assert expected == pytest.approx([0.2, 0.2 + 0.4 / 3, 0.2 + 0.8 / 3, 0.6])  # p = step / (max_steps - 1)
    assert [entry["scale/answer_weight"] for entry in logs] == pytest.approx(expected)
    assert [entry["scale/think_weight"] for entry in logs] == pytest.approx([1 - w for w in expected])
    assert all(entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0 for entry in logs)
    # LLaMA-Factory's own log (the web UI reads it) has every step
    lines = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]  # not the end-of-training summary
    assert [line["current_steps"] for line in lines] == [1, 2, 3, 4]
    assert [line["loss"] for line in lines] == pytest.approx([entry["loss"] for entry in logs])
    # ... with the SCALe metrics of each step (LogCallback writes a fixed set of keys; the launcher adds these)
    for key in ("scale/think_loss", "scale/answer_loss", "scale/think_weight", "scale/answer_weight"):
        assert [line[key] for line in lines] == pytest.approx([entry[key] for entry in logs])
    assert (out / "model.safetensors").is_file()


def test_bad_value_is_reported_naming_the_key(tiny, tmp_path):
    config = write_yaml(tmp_path / "bad.yaml", train_config(tiny, tmp_path / "out", scale_schedule="cosin"))
    result = run_cli("train", str(config), env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    assert result.returncode == 2
    assert "scale-llamafactory: error: scale_schedule: 'cosin' is not allowed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "distributed tasks" not in result.stdout + result.stderr  # reported before torchrun starts


def test_misspelled_scale_key_is_one_line_naming_the_closest_key(tiny, tmp_path):
    """Not LLaMA-Factory's 30-line HfArgumentParser traceback: one line, like a bad value, before torchrun starts."""
    config = write_yaml(tmp_path / "typo.yaml", train_config(tiny, tmp_path / "out", scale_schedul="linear"))
    result = run_cli("train", str(config), env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["scale-llamafactory: error: scale_schedul: unknown SCALe key; did you mean scale_schedule?"]
    assert "Traceback" not in result.stderr and "HfArgumentParser" not in result.stderr
    assert "distributed tasks" not in result.stdout + result.stderr


def test_misspelled_key_in_a_command_line_override(tiny, tmp_path):
    config = write_yaml(tmp_path / "ok.yaml", train_config(tiny, tmp_path / "out"))
    result = run_cli("train", str(config), "scale_answer_weight_ed=0.8")
    assert result.returncode == 2
    assert "error: scale_answer_weight_ed: unknown SCALe key; did you mean scale_answer_weight_end?" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_needs_no_llamafactory_import():
    result = run_cli("help")
    assert result.returncode == 0
    assert "use_scale_loss" in result.stdout and "scale_answer_weight_start" in result.stdout
    for opt in option_fields():  # derived from the core: a new option is listed
        if opt.name != "ignore_index":
            assert f"scale_{opt.name}" in result.stdout
