"""`scale-plugins bench-paper`: a front of the one study runner (``scale_plugins.tools.paper.study``).

The from-scratch task (``arith_small``), the option parsing, the design the options describe, and the whole pipeline
with the tiny model at ``--size smoke`` (runs, resume, results file, report, plots). These tests check that the
pipeline runs end to end and writes sane outputs; they say nothing about which arm wins.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from scale_plugins.data import synthetic_cot  # noqa: E402
from scale_plugins.tools.bench_paper import add_arguments, design_of, parse_scale_set  # noqa: E402
from scale_plugins.tools.paper import study, tasks  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def test_default_task_reproduces_synthetic_cot():
    ours = tasks.arith_cot(64, seed=3)
    theirs = synthetic_cot(64, seed=3)
    assert [{k: v for k, v in s.items() if k != "question"} for s in ours] == theirs


@pytest.mark.parametrize("design", ["scratch", "scratch-smoke"])
def test_small_task_splits_are_disjoint_and_deterministic(design):
    d = study.DESIGNS[design]
    train, dev, held_out = tasks.make_splits("arith_small", d.n_train, d.n_dev, d.n_eval)
    assert len(train) == d.n_train and len(held_out) == d.n_eval and dev == []
    questions = [s["question"] for s in held_out]
    assert len(set(questions)) == len(questions)
    assert not set(questions) & {s["question"] for s in train}
    assert tasks.make_splits("arith_small", d.n_train, d.n_dev, d.n_eval) == (train, dev, held_out)


def test_small_task_answer_depends_on_the_trace():
    _, _, held_out = tasks.make_splits("arith_small", 8, 0, 50)
    for s in held_out:
        text = s["completion"][0]["content"]
        assert text.startswith("<think>\n") and text.endswith(f"</think>\n<answer>{s['solution']}</answer>")
        assert f"the value is {s['solution']}." in text


def test_score_per_question():
    pytest.importorskip("transformers")
    from scale_plugins.testing import bpe_tokenizer

    completions = [
        "<think>\n3 + 4 = 7.\nAfter all the steps the value is 7.\n</think>\n<answer>7</answer>",  # right
        "<think>\n3 + 4 = 8.\nAfter all the steps the value is 8.\n</think>\n<answer>7</answer>",  # right, disagrees
        "<think>\nAfter all the steps the value is 7.\n</think>\n<answer>9</answer>",  # wrong answer
        "<think>\nno closing tag <answer>7</answer>",  # malformed (no closer), but the answer block is right
    ]
    sample = {"solution": "7", "value": "7"}
    m = study.score("arith_small", completions, [sample] * 4, bpe_tokenizer())
    assert m["correct"] == [True, True, False, True]  # accuracy_reward reads the answer block only
    assert m["malformed"] == [False, False, False, True]
    assert m["dropped_closer"] == [False, False, False, True]
    assert m["cut_at_limit"] is None  # not known without the generation's flags
    cut = study.score("arith_small", completions, [sample] * 4, bpe_tokenizer(), cut=[True, False, False, True])
    assert cut["cut_at_limit"] == [False, False, False, True]  # only a dropped closer counts as cut inside the trace
    assert (
        study.score("arith_small", completions, [sample] * 4, bpe_tokenizer(), cut=[False] * 4)["cut_at_limit"]
        == [False] * 4
    )
    assert m["trace_accuracy"] == pytest.approx(0.5)
    assert m["answer_trace_agreement"] == pytest.approx(0.25)
    assert m["mean_think_tokens"] > 5


def test_generation_marks_the_completions_the_token_limit_cut():
    """A completion that emitted its end-of-sequence token was not cut; one that filled ``max_new_tokens`` without it
    was (a dropped closer from there is a trace that ran out of room)."""
    torch = pytest.importorskip("torch")
    from scale_plugins.testing import bpe_tokenizer
    from scale_plugins.tools.paper.common import generate, generate_marked

    tok = bpe_tokenizer()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    words = tok("<think> a b c", add_special_tokens=False)["input_ids"][:3]

    class Scripted(torch.nn.Module):
        """Generates the rows it is given (after the prompt), as ``generate`` would with these stops."""

        device = torch.device("cpu")

        def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
            assert kwargs["eos_token_id"] == eos
            rows = [words[:1] + [eos] + [pad] * (max_new_tokens - 2),  # stopped by itself
                    (words * max_new_tokens)[:max_new_tokens],  # filled the limit
                    words[:2] + [eos] + [pad] * (max_new_tokens - 3)][: len(input_ids)]  # fmt: skip
            return torch.cat([input_ids, torch.tensor(rows)], dim=1)

    marked = generate_marked(Scripted(), tok, ["q1", "q2", "q3"], 4, batch_size=3)
    assert [c for _, c in marked] == [False, True, False]
    assert [t for t, _ in marked] == generate(Scripted(), tok, ["q1", "q2", "q3"], 4, batch_size=3)
    assert [c for _, c in generate_marked(Scripted(), tok, ["q1", "q2"], 4, batch_size=1)] == [False, False]


def test_scale_set_parsing():
    assert parse_scale_set(["normalization=token", "schedule=linear", "answer_weight_end=0.5"]) == {
        "normalization": "token",
        "schedule": "linear",
        "answer_weight_end": 0.5,
    }
    for bad in (["no_such_option=1"], ["normalization"], ["extra_segments=x:<a>:</a>:0:1"]):
        with pytest.raises(SystemExit):  # unknown, no value, a list option (no KEY=VALUE form)
            parse_scale_set(bad)


def test_options_shape_the_design():
    name, d = design_of(parse(["--model", "smollm2", "--size", "smoke", "--seeds", "2", "0", "2"]))
    assert name == "smoke" and d.model == "smollm2" and d.seeds == (2, 0)
    assert study.plan(d) and {p.seed for p in study.plan(d) if not p.tuning} == {0, 2}
    name, d = design_of(parse(["--sft-steps", "8", "4", "--grpo-steps", "3", "--scale-set", "normalization=token"]))
    assert name == "scratch" and d.model == "tiny" and d.budgets == (4, 8) and d.claim_budget == 8
    assert d.grpo_steps == 3 and d.scale_options == (("normalization", "token"),)
    assert d.fingerprint() != study.DESIGNS["scratch"].fingerprint()  # a changed design never resumes the old one
    _, d = design_of(parse(["--model", "smollm2", "--arms", "scale_sft", "sft"]))
    assert d.arms == ("sft", "scale_sft") and d.const_arms == ()
    with pytest.raises(SystemExit, match="go together"):
        design_of(parse(["--train-file", "a.jsonl"]))
    with pytest.raises(SystemExit, match="not with --train-file"):
        design_of(parse(["--train-file", "a.jsonl", "--eval-file", "b.jsonl", "--family", "mc"]))


def test_a_design_travels_to_a_worker_process_unchanged():
    """--jobs: each worker process gets the design as JSON (no command line rewritten), the user's options included."""
    _, d = design_of(parse(["--model", "smollm2", "--seeds", "1", "--scale-set", "normalization=token"]))
    import dataclasses

    assert study.design_from_dict(json.loads(json.dumps(dataclasses.asdict(d)))) == d


def test_smoke_end_to_end_and_resume(tmp_path, capsys):
    pytest.importorskip("trl")
    from scale_plugins.tools.cli import main

    out = tmp_path / "bench"
    argv = ["bench-paper", "--size", "smoke", "--seeds", "0", "1", "--output-dir", str(out), "--threads", "1"]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    design = study.DESIGNS["scratch-smoke"]
    assert data["design"]["name"] == "scratch-smoke" and data["design"]["seeds"] == [0, 1]
    runs = data["runs"]
    arms = design.arms
    assert sorted((r["seed"], r["arm"]) for r in runs) == sorted((s, a) for s in (0, 1) for a in arms)
    for run in runs:
        assert run["model"] == "tiny Qwen2 (0.36M, from scratch)" and run["sft_steps"] == design.budgets[0]
        assert len(run["correct"]) == run["n_eval"] == design.n_eval and set(run["correct"]) <= {"0", "1"}
        for key in ("accuracy", "malformed_rate", "trace_accuracy", "answer_trace_agreement"):
            assert 0.0 <= run[key] <= 1.0, key
        assert 0 <= run["mean_think_tokens"] <= design.max_new_tokens
        assert run["think_ce"] > 0 and run["answer_ce"] > 0 and run["sft_time_s"] > 0
        assert (run["grpo_time_s"] > 0) == run["arm"].endswith("_grpo")
        assert run["precision"] == "fp32"  # the tiny model trains in float32 everywhere
    by_arm = {(r["seed"], r["arm"]): r for r in runs}
    for seed in (0, 1):
        # the GRPO arms continue from the SFT run of the same seed: same SFT time, same SFT history
        assert by_arm[seed, "sft_grpo"]["sft_time_s"] == by_arm[seed, "sft"]["sft_time_s"]
        assert by_arm[seed, "scale_sft_grpo"]["log_history"] == by_arm[seed, "scale_sft"]["log_history"]
        grpo_keys = set().union(*by_arm[seed, "sft_grpo"]["grpo_log_history"])
        assert {"rewards/format_reward/mean", "rewards/accuracy_reward/mean"} <= grpo_keys
    table = (out / "results.md").read_text()
    assert table.startswith("# bench-paper --model tiny (scratch-smoke)")
    for arm in arms:
        assert f"| {study.ARMS[arm].label} |" in table
    assert "SCALe-SFT (defaults) − vanilla SFT" in table and "**What the data say:**" in table
    for png in ("accuracy_vs_time.png", "scale_training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in runs:
        rows = (out / "completions" / (run["key"].replace("/", "_") + ".jsonl")).read_text().splitlines()
        assert len(rows) == design.n_eval and {"question", "solution", "completion"} <= set(json.loads(rows[0]))
    capsys.readouterr()
    # resumed: nothing runs again and the file is unchanged
    before = (out / "results.json").read_text()
    assert main(argv + ["--resume"]) == 0
    assert (out / "results.json").read_text() == before
    assert f"{len(runs)} of {len(runs)} runs already in" in capsys.readouterr().out
    # settings that change a run's result never resume into the same file
    with pytest.raises(SystemExit, match="another design"):
        main(argv + ["--resume", "--scale-set", "normalization=token"])
