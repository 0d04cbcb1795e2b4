"""`scale-plugins bench-paper`: the task, the scoring and the whole pipeline at `--size smoke`.

These tests check that the pipeline runs end to end and writes sane outputs; they say nothing about which arm wins.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from scale_plugins.data import synthetic_cot  # noqa: E402
from scale_plugins.tools.bench_paper import parse_scale_set  # noqa: E402
from scale_plugins.tools.paper import scratch as pb  # noqa: E402


def test_default_task_reproduces_synthetic_cot():
    ours = pb.arith_cot(64, seed=3)
    theirs = synthetic_cot(64, seed=3)
    assert [{k: v for k, v in s.items() if k != "question"} for s in ours] == theirs


@pytest.mark.parametrize("size", sorted(pb.SIZES))
def test_splits_are_disjoint_and_deterministic(size):
    spec = pb.SIZES[size]
    train, held_out = pb.task_splits(spec.task, spec.n_train, spec.n_eval)
    assert len(train) == spec.n_train and len(held_out) == spec.n_eval
    questions = [s["question"] for s in held_out]
    assert len(set(questions)) == len(questions)
    assert not set(questions) & {s["question"] for s in train}
    again = pb.task_splits(spec.task, spec.n_train, spec.n_eval)
    assert again == (train, held_out)


def test_answer_depends_on_the_trace():
    for s in pb.arith_cot(50, seed=0, task=pb.SIZES["default"].task):
        text = s["messages"][1]["content"]
        assert text.startswith("<think>\n") and text.endswith(f"</think>\n<answer>{s['solution']}</answer>")
        assert f"the value is {s['solution']}." in text


def test_score_completions():
    pytest.importorskip("transformers")
    from scale_plugins.testing import bpe_tokenizer

    completions = [
        "<think>\n3 + 4 = 7.\nAfter all the steps the value is 7.\n</think>\n<answer>7</answer>",  # right
        "<think>\n3 + 4 = 8.\nAfter all the steps the value is 8.\n</think>\n<answer>7</answer>",  # right, disagrees
        "<think>\nAfter all the steps the value is 7.\n</think>\n<answer>9</answer>",  # wrong answer
        "<think>\nno closing tag <answer>7</answer>",  # malformed, but the answer block is right
    ]
    m = pb.score_completions(completions, ["7"] * 4, bpe_tokenizer())
    assert m["accuracy"] == pytest.approx(0.75)  # accuracy_reward reads the answer block only
    assert m["malformed_rate"] == pytest.approx(0.25)
    assert m["trace_accuracy"] == pytest.approx(0.5)
    assert m["answer_trace_agreement"] == pytest.approx(0.25)
    assert m["mean_think_tokens"] > 5


def test_scale_set_parsing():
    pytest.importorskip("torch")
    assert parse_scale_set(["normalization=token", "schedule=linear", "answer_weight_end=0.5"]) == {
        "normalization": "token",
        "schedule": "linear",
        "answer_weight_end": 0.5,
    }
    with pytest.raises(SystemExit):
        parse_scale_set(["no_such_option=1"])


def test_smoke_end_to_end(tmp_path):
    pytest.importorskip("trl")
    from scale_plugins.tools.cli import main

    out = tmp_path / "bench"
    assert main(["bench-paper", "--size", "smoke", "--seeds", "0", "1", "--output-dir", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["size"] == "smoke" and result["seeds"] == [0, 1]
    assert result["machine"]["nproc"] >= 1 and result["machine"]["torch"]
    assert result["total_wall_time_s"] > 0
    assert set(result["summary"]) == set(pb.ARMS)
    assert len(result["runs"]) == 2 * len(pb.ARMS)
    for arm, metrics in result["summary"].items():
        for key in pb.METRICS + pb.TIMES:
            assert set(metrics[key]) == {"mean", "std", "n"} and metrics[key]["n"] == 2, (arm, key)
            assert metrics[key]["std"] >= 0
        for key in ("accuracy", "malformed_rate", "trace_accuracy", "answer_trace_agreement"):
            assert 0.0 <= metrics[key]["mean"] <= 1.0
        assert 0 <= metrics["mean_think_tokens"]["mean"] <= pb.SIZES["smoke"].max_new_tokens
        assert metrics["think_ce"]["mean"] > 0 and metrics["answer_ce"]["mean"] > 0
        assert metrics["sft_time_s"]["mean"] > 0
        assert (metrics["grpo_time_s"]["mean"] > 0) == arm.endswith("_grpo")
    by_arm = {(r["seed"], r["arm"]): r for r in result["runs"]}
    for seed in (0, 1):
        # the GRPO arms continue from the SFT run of the same seed: same SFT time, same SFT history
        assert by_arm[seed, "sft_grpo"]["sft_time_s"] == by_arm[seed, "sft"]["sft_time_s"]
        assert by_arm[seed, "scale_sft_grpo"]["log_history"]["sft"] == by_arm[seed, "scale_sft"]["log_history"]
        scale_keys = set().union(*by_arm[seed, "scale_sft"]["log_history"])
        assert {"scale/think_loss", "scale/answer_loss", "scale/think_weight", "scale/answer_weight"} <= scale_keys
        grpo_keys = set().union(*by_arm[seed, "sft_grpo"]["log_history"]["grpo"])
        assert {"rewards/format_reward/mean", "rewards/accuracy_reward/mean"} <= grpo_keys
    weights = [
        row["scale/answer_weight"] for row in by_arm[0, "scale_sft"]["log_history"] if "scale/answer_weight" in row
    ]
    assert weights == sorted(weights) and 0.0 < weights[0] < weights[-1] <= 1.0  # the default schedule rises
    table = (out / "results.md").read_text()
    for arm in pb.ARMS:
        assert f"| {pb.ARM_LABELS[arm]} |" in table
    for seed in (0, 1):
        for arm in pb.ARMS:
            rows = (out / "completions" / f"seed{seed}_{arm}.jsonl").read_text().splitlines()
            assert len(rows) == pb.SIZES["smoke"].n_eval and set(json.loads(rows[0])) == {
                "question",
                "solution",
                "completion",
            }
    for png in ("accuracy_vs_time.png", "scale_training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["seed_wall_time_s"]) == {"0", "1"} and result["resumed_seeds"] == []

    # --resume reuses finished seeds with the same settings (nothing is retrained)
    assert main(["bench-paper", "--size", "smoke", "--seeds", "0", "1", "--output-dir", str(out), "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["resumed_seeds"] == [0, 1] and again["summary"] == result["summary"]
