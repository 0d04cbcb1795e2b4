"""``scale-plugins study``: the powered comparison of docs/results.md (part 1), budgets as a curve.

One resumable command. Every finished run is appended to one JSON file per model (``docs/results/<model>.json`` in
the repository; ``--results`` elsewhere) with the per-question correctness that the paired tests need; the tables,
the plot and the sentences quoted in docs/results.md and README are generated from that file alone
(:func:`report`, ``scale-plugins study --report``), and a test keeps the docs equal to it.

The design (:data:`DESIGNS`) was written down before any SCALe run of this study:

1. **Vanilla-only settings.** For every family and SFT budget, vanilla SFT (TRL's ``SFTTrainer``) trains on seed 0
   at each learning rate of ``lr_grid``; the best dev accuracy wins, ties go to the smaller rate. That rate is the
   budget's rate for **every** arm (vanilla and SCALe alike), so each paired difference compares two methods under
   the same settings. The tuning run at the chosen rate is vanilla's seed-0 run.
2. **Arms** (:data:`ARMS`), all with that rate, the same data, data order and LoRA init per seed: vanilla SFT;
   SCALe-SFT at its defaults; SCALe-SFT with the closer trained as answer (``think_close_segment=answer``); and
   vanilla / SCALe with a constant learning rate after the warm-up (at ``const_budget``), which shows whether
   SCALe's answer weight peaking when a cosine rate is near zero matters.
3. **Budgets**: each budget is its own run with its own schedules (SCALe's cosine reaches its end in every run).
   ``claim_seeds`` seeds at ``claim_budget`` (the budget the claim rests on), ``curve_seeds`` at the others.
4. **Statistics** (:mod:`.stats`): inside each seed, an exact McNemar test on the held-out questions; across seeds,
   the mean paired difference with its 95% t interval and an exact sign-flip p-value.
5. **The closing-tag default**: on the dev split (seed 0, every family and budget), the ``think_close_segment``
   setting with fewer malformed outputs wins, ties to the higher dev accuracy, then to ``think`` (unchanged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import stats, tasks

MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct"}


@dataclasses.dataclass(frozen=True)
class Arm:
    label: str
    trainer: str  # "sft" (TRL's SFTTrainer) or "scale_sft" (ScaleSFTTrainer)
    scale_options: tuple[tuple[str, Any], ...] = ()
    lr_scheduler: str = "cosine"


ARMS: dict[str, Arm] = {
    "sft": Arm("vanilla SFT", "sft"),
    "scale_sft": Arm("SCALe-SFT (defaults)", "scale_sft"),
    "scale_close": Arm("SCALe-SFT, closer as answer", "scale_sft", (("think_close_segment", "answer"),)),
    "sft_const": Arm("vanilla SFT, constant LR", "sft", lr_scheduler="constant_with_warmup"),
    "scale_const": Arm("SCALe-SFT, constant LR", "scale_sft", lr_scheduler="constant_with_warmup"),
}
COSINE_ARMS = ("sft", "scale_sft", "scale_close")
CONST_ARMS = ("sft_const", "scale_const")
#: the paired differences reported: (arm, baseline)
PAIRS = (("scale_sft", "sft"), ("scale_close", "sft"), ("scale_close", "scale_sft"), ("scale_const", "sft_const"))
REGIMES = {"mc": "answer-bound", "arith": "trace-bound", "user": "your data"}
COLOURS = {"sft": "tab:blue", "scale_sft": "tab:orange", "scale_close": "tab:red", "sft_const": "tab:cyan",
           "scale_const": "tab:brown"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Design:
    """Everything that fixes the study's runs. Changing a field makes a new study (a new results file)."""

    model: str
    families: tuple[str, ...]
    n_train: int
    n_dev: int
    n_eval: int
    budgets: tuple[int, ...]
    claim_budget: int
    claim_seeds: int
    curve_seeds: int
    const_budget: int
    const_seeds: int
    batch_size: int
    lr_grid: tuple[float, ...]
    lora_r: int
    max_new_tokens: int
    eval_batch_size: int
    target_accuracy: float

    def fingerprint(self) -> dict[str, Any]:
        """The fields that decide a run's result (not how many seeds run)."""
        keep = ("model", "n_train", "n_dev", "n_eval", "batch_size", "lr_grid", "lora_r", "max_new_tokens")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if k in keep}


DESIGNS: dict[str, Design] = {
    "powered": Design(
        model="smollm2",
        families=("mc", "arith"),
        n_train=1000,
        n_dev=48,
        n_eval=200,
        budgets=(24, 48, 96),
        claim_budget=96,
        claim_seeds=8,
        curve_seeds=3,
        const_budget=96,
        const_seeds=3,
        batch_size=8,
        lr_grid=(5e-4, 1.5e-3, 4.5e-3),
        lora_r=16,
        max_new_tokens=100,
        eval_batch_size=50,
        target_accuracy=0.7,
    ),
    "smoke": Design(
        model="smollm2",
        families=("mc",),
        n_train=16,
        n_dev=2,
        n_eval=3,
        budgets=(1, 2),
        claim_budget=2,
        claim_seeds=2,
        curve_seeds=1,
        const_budget=2,
        const_seeds=1,
        batch_size=2,
        lr_grid=(5e-4, 2e-3),
        lora_r=4,
        max_new_tokens=8,
        eval_batch_size=4,
        target_accuracy=0.7,
    ),
}


@dataclasses.dataclass(frozen=True)
class Planned:
    family: str
    arm: str
    seed: int
    budget: int
    lr: float | None  # None: the budget's tuned rate (known once the tuning runs are in)
    tuning: bool = False

    def key(self, lr: float) -> str:
        return f"{self.family}/{self.budget}/{self.arm}/seed{self.seed}/lr{lr:g}"


def plan(design: Design, families: tuple[str, ...] | None = None, arms: tuple[str, ...] | None = None) -> list[Planned]:
    """Every run of the study, in the order they run: the vanilla-only tuning first (it fixes each budget's rate),
    then the curve seeds at every budget, the remaining seeds at the claim budget, then the constant-LR arms."""
    families = families or design.families
    wanted = arms or tuple(ARMS)
    out: list[Planned] = []
    for budget in design.budgets:
        for family in families:
            out += [Planned(family, "sft", 0, budget, lr, tuning=True) for lr in design.lr_grid]

    def arm_runs(seed: int, budget: int, names: tuple[str, ...]) -> list[Planned]:
        # vanilla's seed-0 run is its tuning run at the chosen rate
        return [
            Planned(f, a, seed, budget, None)
            for f in families
            for a in names
            if a in wanted and not (a == "sft" and seed == 0)
        ]

    for seed in range(design.curve_seeds):
        for budget in design.budgets:
            out += arm_runs(seed, budget, COSINE_ARMS)
    for seed in range(design.curve_seeds, design.claim_seeds):
        out += arm_runs(seed, design.claim_budget, COSINE_ARMS)
    for seed in range(design.const_seeds):
        out += arm_runs(seed, design.const_budget, CONST_ARMS)
    return list(dict.fromkeys(out))


def is_done(planned: Planned, runs: list[dict[str, Any]]) -> bool:
    """Whether ``runs`` hold ``planned`` (a tuning run at its rate; an arm's run at whatever rate it was given)."""
    prefix = planned.key(0.0).rsplit("/lr", 1)[0] + "/lr"
    if planned.lr is not None:
        return any(r["key"] == planned.key(planned.lr) for r in runs)
    return any(r["key"].startswith(prefix) and not r.get("tuning") for r in runs)


# -- the results file -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock next to the results file: family processes may append to it side by side."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"runs": []}
    return json.loads(path.read_text())


def _check_design(data: dict[str, Any], design_name: str, design: Design, path: Path) -> None:
    """One results file = one design on one kind of device and precision (paired runs must not differ in them)."""
    from .common import bf16_is_fast, on_cuda

    saved = data.get("design")
    if saved is not None and saved.get("fingerprint") != design.fingerprint():
        raise SystemExit(
            f"{path} holds runs of another design ({saved.get('name')}: {saved.get('fingerprint')}); "
            f"pass --results with a new file for design {design_name!r}"
        )
    here = ("cuda" if on_cuda() else "cpu", "bf16" if bf16_is_fast() else "fp32")
    there = {(r["device"], r["precision"]) for r in data.get("runs", [])}
    if there and there != {here}:
        raise SystemExit(
            f"{path} holds runs made on {sorted(there)}; this machine trains on {here}: pass --results with a new "
            "file (paired runs must not differ in device or precision)"
        )


def append_run(path: Path, design_name: str, design: Design, record: dict[str, Any] | None) -> None:
    """Add one finished run (replacing an earlier one with its key) and rewrite the file atomically; ``None``
    writes the design alone (before the first run: the design is on record before any result)."""
    with _locked(path):
        data = load(path)
        _check_design(data, design_name, design, path)
        data["design"] = {"name": design_name, **dataclasses.asdict(design), "fingerprint": design.fingerprint()}
        data["runs"] = [r for r in data.get("runs", []) if record is None or r["key"] != record["key"]]
        data["runs"] += [record] if record is not None else []
        data["runs"].sort(key=lambda r: (r["family"], r["sft_steps"], r["arm"], r["seed"], r["lr"]))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        tmp.replace(path)


# -- choosing the rate and the closing-tag default (vanilla only / dev split only) ----------------------------


def chosen_lr(runs: list[dict[str, Any]], family: str, budget: int, grid: tuple[float, ...]) -> float | None:
    """The budget's rate: vanilla seed-0 tuning runs, best dev accuracy, ties to the smaller rate; None until every
    rate of the grid has run."""
    tried = {r["lr"]: r for r in runs if r.get("tuning") and r["family"] == family and r["sft_steps"] == budget}
    if any(lr not in tried for lr in grid):
        return None
    return max(grid, key=lambda lr: (tried[lr]["dev_accuracy"], -lr))


def closing_tag_choice(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rule for the ``think_close_segment`` default, on the dev split of seed 0 (every family and budget with
    both settings): fewer malformed outputs, then higher accuracy, then ``think``."""
    by = {(r["family"], r["sft_steps"], r["arm"]): r for r in runs if r["seed"] == 0 and r.get("dev_n")}
    cells = sorted({(f, b) for f, b, a in by if a == "scale_sft" and (f, b, "scale_close") in by})
    if not cells:
        return None
    total = {}
    for arm in ("scale_sft", "scale_close"):
        total[arm] = {
            "dev_malformed": sum(round(by[f, b, arm]["dev_malformed_rate"] * by[f, b, arm]["dev_n"]) for f, b in cells),
            "dev_correct": sum(round(by[f, b, arm]["dev_accuracy"] * by[f, b, arm]["dev_n"]) for f, b in cells),
        }
    think, answer = total["scale_sft"], total["scale_close"]
    better = (answer["dev_malformed"], -answer["dev_correct"]) < (think["dev_malformed"], -think["dev_correct"])
    return {
        "cells": [list(c) for c in cells],
        "think": think,
        "answer": answer,
        "chosen": "answer" if better else "think",
    }


# -- one run ----------------------------------------------------------------------------------------------------


def per_question(completions: list[str], samples: list[dict[str, Any]]) -> dict[str, list[bool]]:
    """Per held-out question: correct (``accuracy_reward``), malformed (``format_reward == 0``) and dropped closer
    (malformed with a ``<think>`` opener and no ``</think>``)."""
    from ...rewards import accuracy_reward, format_reward

    acc = accuracy_reward(completions, solution=[s["solution"] for s in samples])
    fmt = format_reward(completions)
    return {
        "correct": [bool(a) for a in acc],
        "malformed": [f == 0.0 for f in fmt],
        "dropped_closer": [f == 0.0 and "<think>" in c and "</think>" not in c for c, f in zip(completions, fmt)],
    }


def _bits(flags: list[bool]) -> str:
    return "".join("1" if f else "0" for f in flags)


def run_one(design: Design, planned: Planned, lr: float, data: tuple[list, list, list], threads: int) -> dict[str, Any]:
    """Train one arm, evaluate it (held-out; dev too for the tuning runs and the seed-0 SCALe runs), one record."""
    import torch

    from . import pretrained
    from .common import bf16_is_fast, generate, on_cuda, segment_ce

    train, dev, held_out = data
    arm = ARMS[planned.arm]
    size = dataclasses.replace(
        pretrained.SIZES["default"],
        families=(planned.family,),
        n_train=design.n_train,
        n_dev=design.n_dev,
        n_eval=design.n_eval,
        sft_steps=planned.budget,
        batch_size=design.batch_size,
        learning_rate=lr,
        lora_r=design.lora_r,
        max_new_tokens=design.max_new_tokens,
        eval_batch_size=design.eval_batch_size,
    )
    options = dict(arm.scale_options)
    out = Path(os.environ.get("SCALE_PLUGINS_STUDY_TMP", "study_tmp"))
    model, sft_time, history = pretrained.train_sft(
        arm.trainer, size, planned.seed, lr, train, out, options, lr_scheduler=arm.lr_scheduler
    )
    tokenizer = pretrained.base_tokenizer()
    model.to("cuda" if on_cuda() else "cpu")
    t0 = time.perf_counter()
    dtype = pretrained.eval_dtype()
    completions = generate(model, tokenizer, [s["prompt"] for s in held_out], size.max_new_tokens,
                           size.eval_batch_size, dtype=dtype)  # fmt: skip
    scored = per_question(completions, held_out)
    metrics = pretrained.score(planned.family, completions, held_out, tokenizer)
    rows = [{"prompt": s["prompt"], "completion": s["completion"]} for s in held_out]
    metrics.update(segment_ce(model, tokenizer, rows, size.eval_batch_size))
    record: dict[str, Any] = {
        "key": planned.key(lr),
        "model": MODEL_NAMES.get(design.model, design.model),
        "family": planned.family,
        "arm": planned.arm,
        "seed": planned.seed,
        "sft_steps": planned.budget,
        "grpo_steps": 0,
        "n_eval": len(held_out),
        "accuracy": sum(scored["correct"]) / len(held_out),
        "malformed_rate": sum(scored["malformed"]) / len(held_out),
        "dropped_closer_rate": sum(scored["dropped_closer"]) / len(held_out),
        "sft_time_s": sft_time,
        "grpo_time_s": 0.0,
        "lr": lr,
        "lr_scheduler": arm.lr_scheduler,
        "tuning": planned.tuning,
        "scale_options": options if arm.trainer == "scale_sft" else None,
        "correct": _bits(scored["correct"]),
        "malformed": _bits(scored["malformed"]),
        "dropped_closer": _bits(scored["dropped_closer"]),
        **{
            k: metrics.get(k)
            for k in ("mean_think_tokens", "trace_accuracy", "answer_trace_agreement", "think_ce", "answer_ce")
        },  # fmt: skip
        "final_train_loss": next((row["loss"] for row in reversed(history) if "loss" in row), None),
        "device": "cuda" if on_cuda() else "cpu",
        "precision": "bf16" if bf16_is_fast() else "fp32",
        "torch_threads": torch.get_num_threads(),
        "eval_time_s": time.perf_counter() - t0,
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sample_completions": completions[:2],
    }
    if planned.tuning or (planned.seed == 0 and arm.trainer == "scale_sft"):
        dev_done = generate(model, tokenizer, [s["prompt"] for s in dev], size.max_new_tokens, size.eval_batch_size,
                            dtype=dtype)  # fmt: skip
        dev_scored = per_question(dev_done, dev)
        record.update(
            dev_n=len(dev),
            dev_accuracy=sum(dev_scored["correct"]) / len(dev),
            dev_malformed_rate=sum(dev_scored["malformed"]) / len(dev),
            dev_dropped_closer_rate=sum(dev_scored["dropped_closer"]) / len(dev),
        )
    return record


# -- the whole study --------------------------------------------------------------------------------------------


def run(
    design_name: str = "powered",
    results: str | Path | None = None,
    families: list[str] | None = None,
    arms: list[str] | None = None,
    threads: int = 1,
    max_runs: int | None = None,
    update_docs: bool = False,
) -> dict[str, Any]:
    """Run what is missing from ``results`` (resumable at run granularity), then write the report."""
    from tqdm.auto import tqdm

    from .common import quiet_libraries

    design = DESIGNS[design_name]
    path = Path(results or default_results_path(design))
    quiet_libraries(threads)
    fams = tuple(families or design.families)
    unknown = [f for f in fams if f not in tasks.FAMILIES]
    if unknown:
        raise SystemExit(f"--family {unknown}: choose from {sorted(tasks.FAMILIES)}")
    todo_plan = plan(design, fams, tuple(arms) if arms else None)
    data = load(path)
    _check_design(data, design_name, design, path)
    missing = [p for p in todo_plan if not is_done(p, data.get("runs", []))]
    if "design" not in data:
        append_run(path, design_name, design, None)
    splits = {f: tasks.make_splits(f, design.n_train, design.n_dev, design.n_eval) for f in fams}
    print(
        f"study {design_name} ({MODEL_NAMES.get(design.model, design.model)} + LoRA r={design.lora_r}): families "
        f"{list(fams)}, budgets {list(design.budgets)} x batch {design.batch_size}, {design.n_eval} held-out / "
        f"{design.n_dev} dev questions per family; {len(todo_plan) - len(missing)} of {len(todo_plan)} runs already in "
        f"{path}",
        flush=True,
    )
    if missing:
        from . import pretrained

        pretrained.base_checkpoint()
        first = _estimate_first(design, missing, splits, threads)
        print(f"estimated time for the {len(missing)} missing runs: {first / 3600:.1f} h (from a measured step)",
              flush=True)  # fmt: skip
    bar = tqdm(total=len(missing), desc="study", unit="run", file=sys.stderr, dynamic_ncols=True)
    ran = 0
    for planned in missing:
        if max_runs is not None and ran >= max_runs:
            break
        runs = load(path).get("runs", [])
        lr = planned.lr if planned.lr is not None else chosen_lr(runs, planned.family, planned.budget, design.lr_grid)
        if lr is None:
            bar.write(f"skipped {planned}: the vanilla tuning of its budget has not finished")
            continue
        record = run_one(design, planned, lr, splits[planned.family], threads)
        append_run(path, design_name, design, record)
        ran += 1
        bar.update(1)
        bar.set_postfix_str(f"{record['key']}: acc {record['accuracy']:.2f}")
    bar.close()
    final = load(path)
    result = report(final)
    if update_docs:
        write_docs(result, design.model)
    print(result["markdown"])
    return result


def default_results_path(design: Design) -> Path:
    return Path("docs/results") / f"{design.model}.json"


def _estimate_first(design: Design, missing: list[Planned], splits: dict, threads: int) -> float:
    """Seconds for the missing runs, from one measured SFT step of the base model (warm-up excluded) and the
    generation of one evaluation batch: no machine rates in code."""
    import torch

    from . import pretrained
    from .common import bf16_is_fast, on_cuda

    model, tokenizer = pretrained._load_base()
    device = "cuda" if on_cuda() else "cpu"
    model.to(device).train()
    family = missing[0].family
    rows = splits[family][0][: design.batch_size]
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows]
    enc = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    dtype = torch.bfloat16 if bf16_is_fast() else torch.float32

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = model(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    pretrained._load_base()
    load_s = time.perf_counter() - t0
    step()
    per_step = min(step() for _ in range(2))
    model.eval()
    prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    penc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(**penc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    per_token = (time.perf_counter() - t0) / 8 * (design.eval_batch_size / len(rows)) ** 0.5
    per_eval_batch = per_token * design.max_new_tokens
    total = 0.0
    for p in missing:
        evals = math.ceil(design.n_eval / design.eval_batch_size) + (
            math.ceil(design.n_dev / design.eval_batch_size) if p.tuning or p.seed == 0 else 0
        )
        total += p.budget * per_step + evals * per_eval_batch + 3 * load_s
    return total


# -- the report: tables, sentences and the plot, from the results file alone ----------------------------------


def _cells(runs: list[dict[str, Any]], design: dict[str, Any]) -> dict[tuple[str, int, str], dict[int, dict]]:
    """{(family, budget, arm): {seed: run}} at each budget's tuned rate; vanilla's seed 0 is its tuning run there."""
    grid = tuple(design["lr_grid"])
    out: dict[tuple[str, int, str], dict[int, dict]] = {}
    for r in runs:
        lr = chosen_lr(runs, r["family"], r["sft_steps"], grid)
        if lr is None or not math.isclose(r["lr"], lr):
            continue
        if r.get("tuning") and r["arm"] != "sft":
            continue
        out.setdefault((r["family"], r["sft_steps"], r["arm"]), {})[r["seed"]] = r
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _interval(ci: dict[str, float]) -> str:
    if ci["n"] < 2:
        return f"{100 * ci['mean']:+.1f} (1 seed, no interval)"
    return f"{100 * ci['mean']:+.1f} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"


def paired(cells: dict, family: str, budget: int, arm: str, base: str) -> dict[str, Any] | None:
    a, b = cells.get((family, budget, arm), {}), cells.get((family, budget, base), {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    per_seed = []
    for s in seeds:
        test = stats.mcnemar_exact([c == "1" for c in a[s]["correct"]], [c == "1" for c in b[s]["correct"]])
        per_seed.append({"seed": s, "diff": a[s]["accuracy"] - b[s]["accuracy"], **test})
    diffs = [p["diff"] for p in per_seed]
    ci = stats.t_interval(diffs)
    return {
        "arm": arm,
        "base": base,
        "family": family,
        "budget": budget,
        "seeds": seeds,
        "per_seed": per_seed,
        "interval": ci,
        "sign_flip_p": stats.sign_flip_p(diffs),
        "significant": ci["n"] >= 2 and (ci["low"] > 0 or ci["high"] < 0),
    }


def _verdict(p: dict[str, Any]) -> str:
    ci = p["interval"]
    n = ci["n"]
    if n < 2:
        return "one seed: no interval yet"
    word = "significant" if p["significant"] else "not significant"
    direction = "better" if ci["mean"] > 0 else "worse" if ci["mean"] < 0 else "different"
    head = f"{100 * abs(ci['mean']):.1f} points {direction}" if ci["mean"] else "no different on average"
    return f"{head} ({word}: 95% interval {_interval(ci)}, {n} seeds)"


def report(data: dict[str, Any]) -> dict[str, Any]:
    """Tables and sentences of the study from its results file (``data``: the loaded JSON)."""
    runs = data.get("runs", [])
    design = data.get("design")
    if design is None or not runs:
        return {"markdown": "No run has finished yet.\n", "summary": "No run has finished yet.", "pairs": []}
    cells = _cells(runs, design)
    families = [f for f in design["families"] if any(k[0] == f for k in cells)] or sorted({r["family"] for r in runs})
    budgets = list(design["budgets"])
    lines: list[str] = []
    all_pairs: list[dict[str, Any]] = []
    n_total = len(plan(Design(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in design.items()
                                  if k in {f.name for f in dataclasses.fields(Design)}})))  # fmt: skip
    lines.append(
        f"{len(runs)} of {n_total} planned runs finished "
        f"(model {runs[0]['model']}; devices: {', '.join(sorted({r['device'] + ' ' + r['precision'] for r in runs}))})."
    )
    lines.append("")
    lines.append("**Learning rate per budget** (vanilla SFT alone, seed 0, dev accuracy; ties to the smaller rate):")
    lines.append("")
    lines.append("| family | budget | " + " | ".join(f"lr {lr:g}" for lr in design["lr_grid"]) + " | chosen |")
    lines.append("|---|---|" + "---|" * (len(design["lr_grid"]) + 1))
    for family in families:
        for budget in budgets:
            tried = {r["lr"]: r for r in runs if r.get("tuning") and r["family"] == family and r["sft_steps"] == budget}
            if not tried:
                continue
            row = [f"{_pct(tried[lr]['dev_accuracy'])}" if lr in tried else "pending" for lr in design["lr_grid"]]
            lr = chosen_lr(runs, family, budget, tuple(design["lr_grid"]))
            lines.append(f"| `{family}` | {budget} | " + " | ".join(row) + f" | {lr:g} |" if lr else
                         f"| `{family}` | {budget} | " + " | ".join(row) + " | pending |")  # fmt: skip
    for family in families:
        lines += ["", f"#### `{family}` ({REGIMES.get(family, family)}): held-out accuracy by SFT budget", ""]
        lines.append("| arm | " + " | ".join(f"{b} steps" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for arm in ARMS:
            row = []
            for budget in budgets:
                seeds = cells.get((family, budget, arm), {})
                if not seeds:
                    row.append("")
                    continue
                acc = [r["accuracy"] for r in seeds.values()]
                mal = statistics.fmean(r["malformed_rate"] for r in seeds.values())
                drop = statistics.fmean(r["dropped_closer_rate"] for r in seeds.values())
                ci = stats.t_interval(acc)
                spread = f" ± {100 * ci['half_width']:.1f}" if ci["n"] > 1 else ""
                row.append(f"{_pct(ci['mean'])}{spread} (n={ci['n']}; malformed {_pct(mal)}, no closer {_pct(drop)})")
            if any(row):
                lines.append(f"| {ARMS[arm].label} | " + " | ".join(row) + " |")
        lines += ["", "Paired differences (arm − baseline, accuracy points; per seed with its exact McNemar p):", ""]
        lines.append("| arm − baseline | budget | mean [95% interval] | sign-flip p | per seed (McNemar p) |")
        lines.append("|---|---|---|---|---|")
        for arm, base in PAIRS:
            for budget in budgets:
                p = paired(cells, family, budget, arm, base)
                if p is None:
                    continue
                all_pairs.append(p)
                per = ", ".join(f"{100 * s['diff']:+.1f} (p={s['p']:.2g})" for s in p["per_seed"])
                lines.append(
                    f"| {ARMS[arm].label} − {ARMS[base].label} | {budget} | {_interval(p['interval'])} | "
                    f"{p['sign_flip_p']:.2g} | {per} |"
                )
        target = design["target_accuracy"]
        reach = []
        for arm in ARMS:
            hit = None
            for budget in budgets:
                seeds = cells.get((family, budget, arm), {})
                if seeds and statistics.fmean(r["accuracy"] for r in seeds.values()) >= target:
                    hit = (budget, statistics.fmean(r["sft_time_s"] for r in seeds.values()))
                    break
            if any(k[0] == family and k[2] == arm for k in cells):
                reach.append(f"{ARMS[arm].label}: " + (f"{hit[0]} steps ({hit[1]:.0f} s)" if hit else "not reached"))
        lines += ["", f"First budget at which the mean accuracy reaches {_pct(target)}: " + "; ".join(reach) + "."]
    choice = closing_tag_choice(runs)
    if choice is not None:
        lines += [
            "",
            f"**Closing-tag default** (dev split, seed 0, {len(choice['cells'])} family x budget cells): "
            f"`think`: {choice['think']['dev_malformed']} malformed, {choice['think']['dev_correct']} correct; "
            f"`answer`: {choice['answer']['dev_malformed']} malformed, {choice['answer']['dev_correct']} correct "
            f"-> `{choice['chosen']}`.",
        ]
    summary = summarize(all_pairs, design)
    lines += ["", "**What the data say:** " + summary]
    if cells:  # write_docs draws it from the same file
        model = design.get("model", "smollm2")
        lines += ["", f"![accuracy vs SFT budget and wall time](img/results_{model}_curve.png)"]
    return {"markdown": "\n".join(lines) + "\n", "summary": summary, "pairs": all_pairs, "closing_tag": choice}


def summarize(pairs: list[dict[str, Any]], design: dict[str, Any]) -> str:
    """One sentence per regime for SCALe-SFT (defaults) − vanilla SFT at the claim budget (or the largest with
    data), and the closing-tag arm."""
    parts = []
    for family in design["families"]:
        mine = [p for p in pairs if p["family"] == family and p["arm"] == "scale_sft" and p["base"] == "sft"]
        if not mine:
            continue
        at = [p for p in mine if p["budget"] == design["claim_budget"]] or mine
        best = max(at, key=lambda p: (p["interval"]["n"], p["budget"]))
        text = f"`{family}` ({REGIMES.get(family, family)}), {best['budget']} steps: SCALe-SFT is {_verdict(best)}"
        close = [p for p in pairs if p["family"] == family and p["arm"] == "scale_close" and p["base"] == "sft"
                 and p["budget"] == best["budget"]]  # fmt: skip
        if close:
            text += f"; with the closer as answer {_verdict(close[0])}"
        enough = best["interval"]["n"] >= design["claim_seeds"]
        parts.append(text + ("" if enough else f" (study in progress: {design['claim_seeds']} seeds planned)"))
    return ". ".join(parts) + "." if parts else "No paired comparison has finished yet."


def plot(data: dict[str, Any], path: Path) -> bool:
    """Accuracy against SFT budget and against SFT wall time, per family (mean over seeds, 95% t interval)."""
    from .common import pyplot

    plt = pyplot()
    runs, design = data.get("runs", []), data.get("design")
    if plt is None or not runs or design is None:
        return False
    cells = _cells(runs, design)
    families = [f for f in design["families"] if any(k[0] == f for k in cells)]
    if not families:
        return False
    fig, axes = plt.subplots(2, len(families), figsize=(6.2 * len(families), 8.4), squeeze=False)
    for col, family in enumerate(families):
        for arm in ARMS:
            pts = []
            for budget in design["budgets"]:
                seeds = cells.get((family, budget, arm), {})
                if seeds:
                    ci = stats.t_interval([r["accuracy"] for r in seeds.values()])
                    t = statistics.fmean(r["sft_time_s"] for r in seeds.values())
                    pts.append((budget, t, 100 * ci["mean"], 100 * min(ci["half_width"], 1.0)))
            if not pts:
                continue
            for row, x in ((0, [p[0] for p in pts]), (1, [p[1] for p in pts])):
                axes[row][col].errorbar(x, [p[2] for p in pts], yerr=[p[3] for p in pts], marker="o", capsize=3,
                                        color=COLOURS[arm], label=ARMS[arm].label)  # fmt: skip
        axes[0][col].set_xlabel("SFT optimizer steps")
        axes[1][col].set_xlabel("SFT wall time (s)")
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_ylabel("held-out accuracy (%)")
            ax.set_title(f"{family} ({REGIMES.get(family, family)})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


BEGIN, END = "<!-- study:{model}:begin (generated by `scale-plugins study --report`) -->", "<!-- study:{model}:end -->"


def replace_block(text: str, model: str, body: str) -> str:
    """``text`` with the generated block of ``model`` replaced by ``body`` (the markers must be there)."""
    begin, end = BEGIN.format(model=model), END.format(model=model)
    if begin not in text or end not in text:
        raise ValueError(f"the markers {begin!r} / {end!r} are missing")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def write_docs(result: dict[str, Any], model: str, root: Path = Path(".")) -> None:
    """docs/results.md's generated section and README's summary line, from :func:`report`."""
    results_md = root / "docs" / "results.md"
    results_md.write_text(replace_block(results_md.read_text(), model, result["markdown"]))
    readme = root / "README.md"
    readme.write_text(replace_block(readme.read_text(), model, result["summary"]))
    plot(load(root / "docs" / "results" / f"{model}.json"), root / "docs" / "img" / f"results_{model}_curve.png")
