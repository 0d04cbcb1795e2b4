from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from scale_plugins.cli import main
from scale_plugins.data import bundled_path, load_bundled, synthetic_cot


def test_bundled_dataset_is_the_generator_output():
    assert load_bundled() == json.loads(json.dumps(synthetic_cot(512, seed=0)))


def test_schedule_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "s.png"
    assert main(["schedule", "--max-steps", "100", "--rows", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["step", "progress", "think_weight", "answer_weight"]
    assert [float(x) for x in out[1].split()[2:]] == [0.9, 0.1]
    assert [float(x) for x in out[3].split()[2:]] == [0.1, 0.9]
    assert plot.stat().st_size > 1000


def test_schedule_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["schedule", "--schedule", "exp"])
    from scale_plugins.core import ScaleConfigError

    with pytest.raises(ScaleConfigError, match="answer_weight_end"):
        main(["schedule", "--answer-weight-end", "3"])


@pytest.mark.parametrize("tokenizer", ["builtin:qwen2.5", "builtin:qwen3"])
def test_inspect_shows_segments(tokenizer, capsys):
    pytest.importorskip("transformers")
    assert (
        main(["inspect", "--tokenizer", tokenizer, "--data", str(bundled_path()), "--num-samples", "2", "--plain"]) == 0
    )
    out = capsys.readouterr().out
    assert "[think]" in out
    assert "[answer]" in out and "[ignored]" in out
    totals = out.splitlines()[-1]
    assert totals.startswith("=== totals over 2 samples:")
    counts = dict(kv.split("=") for kv in totals.split(": ")[1].split(", "))
    assert int(counts["think"]) > 5 * int(counts["answer"]) > 0


def test_inspect_warns_when_tags_are_absent(tmp_path, capsys):
    pytest.importorskip("transformers")
    code = main(
        [
            "inspect",
            "--tokenizer",
            "builtin:qwen3",
            "--data",
            str(bundled_path()),
            "--num-samples",
            "1",
            "--plain",
            "--think-open",
            "<reason>",
            "--think-close",
            "</reason>",
        ]
    )
    assert code == 2
    assert "no '<reason>'" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "scale_plugins.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("options", "inspect", "schedule", "demo", "bench", "trl-sft"):
        assert command in out


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    pytest.importorskip("trl")
    from scale_plugins.demo import run_demo

    summary = run_demo(output_dir=str(tmp_path), max_steps=4, batch_size=4)
    assert summary["step"] == 4
    assert math.isfinite(summary["scale/answer_loss"]) and summary["scale/answer_tokens"] > 0
    assert (tmp_path / "scale_demo.png").exists() and (tmp_path / "log_history.json").exists()
