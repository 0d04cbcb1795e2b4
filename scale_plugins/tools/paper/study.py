"""The one runner of the comparison studies (docs/results.md): ``scale-plugins study`` and ``scale-plugins bench-paper``.

A study is a model (an entry of :data:`.models.MODELS`) and a design (:data:`DESIGNS`: task families, data sizes,
SFT budgets, learning-rate grid, seeds, arms, an optional GRPO stage). One resumable command: every finished run is
appended to one JSON results file (``docs/results/<model>.json`` for ``study``, ``<output-dir>/results.json`` for
``bench-paper``) with the per-question correctness that the paired tests need; the tables, the plots and the
sentences quoted in docs/results.md and README are generated from that file alone (:func:`report`,
``scale-plugins study --report``), and a test keeps the docs equal to it.

The rules (written down before any SCALe run of the powered study, ``DESIGNS["powered"]``):

1. **Vanilla-only settings.** For every family and SFT budget, vanilla SFT (TRL's ``SFTTrainer``) trains on seed 0
   at each learning rate of ``lr_grid``; the best dev accuracy wins, ties go to the smaller rate. That rate is the
   budget's rate for **every** arm (vanilla and SCALe alike), so each paired difference compares two methods under
   the same settings. The tuning run at the chosen rate is vanilla's seed-0 run. A grid of one rate needs no tuning.
2. **Arms** (:data:`ARMS`), all with that rate, the same data, data order and init (LoRA or, from scratch, the
   whole model) per seed: vanilla SFT; SCALe-SFT at its defaults; SCALe-SFT with the closer trained as answer
   (``think_close_segment=answer``); vanilla / SCALe with a constant learning rate after the warm-up (at
   ``const_budget``), which shows whether SCALe's answer weight peaking when a cosine rate is near zero matters;
   SCALe with token normalization; and a GRPO stage after vanilla or SCALe SFT.
3. **Budgets**: each budget is its own run with its own schedules (SCALe's cosine reaches its end in every run).
   ``claim_seeds`` seeds at ``claim_budget`` (the budget the claim rests on), ``curve_seeds`` at the others.
   **Precision** (:func:`claim_seed_count`, designs with ``max_claim_seeds``): once those seeds have all run, while
   the 95% interval of some paired difference at the claim budget is wider than ``target_half_width`` (10 points),
   one more seed of every arm, up to ``max_claim_seeds``; ``precision_arms`` narrows both to the pairs the claim
   rests on, ``precision_budgets`` widens the rule to other budgets (each from its own seeds). The rule looks at the
   spread of the differences only, never at their sign or size, so the intervals keep their meaning.
4. **Statistics** (:mod:`.stats`): inside each seed, an exact McNemar test on the held-out questions; across seeds,
   the mean paired difference with its 95% t interval and an exact sign-flip p-value.
5. **GRPO settings** (designs with a ``grpo_grid``): vanilla SFT + GRPO alone, seed 0, at the claim budget and the
   chosen SFT rate, once per setting; the best dev accuracy wins (ties to the cheaper setting, then the smaller
   rate), and every GRPO arm uses it. The report gives the wall time of SFT + GRPO against SCALe-SFT's.
6. **The closing-tag default**: on the dev split (seed 0, every family and budget), the ``think_close_segment``
   setting with fewer malformed outputs wins, ties to the higher dev accuracy, then to ``think`` (unchanged).
7. **The closing-tag study** (``DESIGNS["closing"]``, fixed before any run of ``think_close_segment=own``): at 24
   SFT steps, where the powered study's only skipped closer was, every setting (``think``, ``answer``, ``own``) and
   vanilla on seeds 0-5 of both families; the default is the setting with the fewest dev completions that skip the
   closer (stop or answer without closing the trace; a trace cut by the generation limit is not counted), summed
   over seeds and families, ties to more correct dev answers, then to ``think`` (:func:`closing_tag_default`).
   Every seed's SCALe runs are scored on the dev split there (``dev_every_seed``); a reused run of another seed
   than 0 gets its dev scores from ``study --recheck`` (a rerun that reproduces its held-out results).

No machine rates in code: the time estimate comes from a step, a load and a generation measured on the machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...core.options import ScaleOptions
from . import stats, tasks
from .models import MODELS, ModelSpec, lora_config

#: the closing-tag setting SCALe trains with when none is given (``ScaleOptions.think_close_segment``, chosen by
#: rule 7); a design's ``closer`` says which one its SCALe arms without a setting of their own ran with
DEFAULT_CLOSE = ScaleOptions().think_close_segment


@dataclasses.dataclass(frozen=True)
class Arm:
    label: str
    #: "sft" (TRL's SFTTrainer), "scale_sft" (ScaleSFTTrainer) or "none" (the base model as it is: greedy decoding
    #: makes it the same for every seed and budget, so it runs once per family, at the claim budget's seed 0)
    trainer: str
    scale_options: tuple[tuple[str, Any], ...] = ()
    lr_scheduler: str = "cosine"
    #: the SFT arm this arm continues with a GRPO stage (None: SFT only)
    grpo_after: str | None = None


ARMS: dict[str, Arm] = {
    "zero_shot": Arm("zero-shot", "none"),
    "sft": Arm("vanilla SFT", "sft"),
    "scale_sft": Arm("SCALe-SFT (defaults)", "scale_sft"),
    "scale_close": Arm("SCALe-SFT, closer as answer", "scale_sft", (("think_close_segment", "answer"),)),
    "scale_own": Arm("SCALe-SFT, closer as own segment", "scale_sft", (("think_close_segment", "own"),)),
    "scale_think": Arm("SCALe-SFT, closer as think", "scale_sft", (("think_close_segment", "think"),)),
    "sft_const": Arm("vanilla SFT, constant LR", "sft", lr_scheduler="constant_with_warmup"),
    "scale_const": Arm("SCALe-SFT, constant LR", "scale_sft", lr_scheduler="constant_with_warmup"),
    "scale_token": Arm("SCALe-SFT, token norm.", "scale_sft", (("normalization", "token"),)),
    "sft_grpo": Arm("vanilla SFT + GRPO", "sft", grpo_after="sft"),
    "scale_sft_grpo": Arm("SCALe-SFT + GRPO", "scale_sft", grpo_after="scale_sft"),
}
COSINE_ARMS = ("sft", "scale_sft", "scale_close")
CONST_ARMS = ("sft_const", "scale_const")
#: the paired differences reported: (arm, baseline); the last one is the paper's "SCALe-SFT as good as SFT + GRPO"
PAIRS = (("scale_sft", "sft"), ("scale_close", "sft"), ("scale_close", "scale_sft"), ("scale_own", "sft"),
         ("scale_own", "scale_sft"), ("scale_think", "sft"), ("scale_think", "scale_sft"), ("scale_const", "sft_const"), ("scale_token", "sft"),
         ("scale_sft_grpo", "sft_grpo"), ("scale_sft", "sft_grpo"))  # fmt: skip
REGIMES = {"mc": "answer-bound", "arith": "trace-bound", "arith_small": "trace-bound", "user": "your data"}
COLOURS = {"zero_shot": "tab:gray", "sft": "tab:blue", "scale_sft": "tab:orange", "scale_close": "tab:red", "scale_own": "tab:green", "scale_think": "darkgoldenrod", "sft_const": "tab:cyan",
           "scale_const": "tab:brown", "scale_token": "tab:olive", "sft_grpo": "tab:purple",
           "scale_sft_grpo": "tab:pink"}  # fmt: skip
#: the metrics of every run besides accuracy and the malformed / dropped-closer rates (which come from the
#: per-question results), as the record stores them and the report's diagnostics table shows them
METRICS = {
    "mean_think_tokens": "think tokens",
    "trace_accuracy": "trace correct",
    "answer_trace_agreement": "answer = trace",
    "think_ce": "held-out think CE",
    "answer_ce": "held-out answer CE",
    "sft_time_s": "SFT time (s)",
    "grpo_time_s": "GRPO time (s)",
}


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
    # fields added after the powered study started: their defaults are its settings (its results file, which lacks
    # them, reads as before) and they enter the fingerprint only where a design sets them otherwise
    arms: tuple[str, ...] = COSINE_ARMS
    const_arms: tuple[str, ...] = CONST_ARMS
    #: explicit seeds at every budget (``bench-paper --seeds``) instead of ``curve_seeds`` / ``claim_seeds``
    seeds: tuple[int, ...] | None = None
    warmup_divisor: int = 10  # warm-up steps: budget // warmup_divisor (at least 1)
    grpo_steps: int = 0
    grpo_prompts_per_step: int = 0
    num_generations: int = 0
    grpo_learning_rate: float = 0.0
    #: GRPO settings to choose from on vanilla alone: (rate, generations per prompt, prompts per step). With two or
    #: more, vanilla SFT + GRPO runs once per setting (seed 0, the claim budget, the chosen SFT rate); the best dev
    #: accuracy wins, ties to the cheaper setting (fewer generations x prompts), then to the smaller rate; every GRPO
    #: arm then uses it. Empty: the ``grpo_*`` fields above
    grpo_grid: tuple[tuple[float, int, int], ...] = ()
    #: the precision a claim needs: every paired difference at the claim budget with a 95% interval of at most
    #: +- this (accuracy as a fraction; the report says where it is met and how many seeds the spread would need)
    target_half_width: float = 0.10
    #: the precision rule (:func:`claim_seed_count`): once the claim budget's seeds have all run, while some paired
    #: difference there has an interval wider than ``target_half_width``, one more seed of every arm, up to this
    #: many seeds (at most ``claim_seeds``: the seeds are fixed)
    max_claim_seeds: int = 0
    #: the arms the precision rule watches and adds seeds to (their paired differences at the claim budget); empty:
    #: every trained arm. Arms outside keep ``claim_seeds`` seeds and the report still gives their intervals
    precision_arms: tuple[str, ...] = ()
    #: the budgets the precision rule watches, each from its own seeds (``claim_seeds`` at the claim budget,
    #: ``curve_seeds`` at the others) up to ``max_claim_seeds``; empty: the claim budget only
    precision_budgets: tuple[int, ...] = ()
    #: evaluate every seed's SCALe-SFT runs on the dev split, not seed 0's alone (rule 7 counts dev completions over
    #: seeds); the held-out results do not depend on it
    dev_every_seed: bool = False
    #: the ``think_close_segment`` of the SCALe arms that set none (``scale_sft`` and the arms built on it):
    #: ``think`` in the designs fixed while it was the package default (their results files lack the field), the
    #: package default (:data:`DEFAULT_CLOSE`) in the later ones; every run records it in its ``scale_options``
    closer: str = "think"
    #: SCALe options of every SCALe arm (``bench-paper --scale-set``), under the arm's own
    scale_options: tuple[tuple[str, Any], ...] = ()
    #: your data (family ``user``): JSONL files and the gold answer column
    train_file: str | None = None
    eval_file: str | None = None
    answer_column: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The fields that decide a run's result (not how many seeds run); user data by its content."""
        keep = ("model", "n_train", "n_dev", "n_eval", "batch_size", "lr_grid", "lora_r", "max_new_tokens")
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if k in keep}
        for name in ("warmup_divisor", "grpo_steps", "grpo_prompts_per_step", "num_generations", "grpo_learning_rate",
                     "closer"):  # fmt: skip
            if getattr(self, name) != _DEFAULTS[name]:
                out[name] = getattr(self, name)
        if self.scale_options:
            out["scale_options"] = dict(self.scale_options)
        if self.grpo_grid:
            out["grpo_grid"] = [list(g) for g in self.grpo_grid]
        if self.train_file is not None:
            out["data"] = {
                "train_sha256": _sha256(self.train_file),
                "eval_sha256": _sha256(self.eval_file),
                "answer_column": self.answer_column,
            }
        return out

    def seeds_at(self, budget: int) -> tuple[int, ...]:
        if self.seeds is not None:
            return self.seeds
        return tuple(range(self.claim_seeds if budget == self.claim_budget else self.curve_seeds))


def _sha256(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def design_from_dict(saved: dict[str, Any]) -> Design:
    """The :class:`Design` a results file holds (its JSON lists as tuples; fields it lacks at their defaults)."""
    names = {f.name for f in dataclasses.fields(Design)}

    def value(v: Any) -> Any:
        return tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v

    return Design(**{k: value(v) for k, v in saved.items() if k in names})


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Design)}


def arm_options(design: Design, arm: str) -> dict[str, Any]:
    """The SCALe options ``arm`` trains with in ``design`` (and its runs record): the design's ``closer``, under the
    design's own options (``bench-paper --scale-set``), under the arm's."""
    return {"think_close_segment": design.closer, **dict(design.scale_options), **dict(ARMS[arm].scale_options)}


def arm_closer(arm: str, closer: str | None = None) -> str | None:
    """The ``think_close_segment`` ``arm`` trains with: its own, else ``closer`` (the design's)."""
    return dict(ARMS[arm].scale_options).get("think_close_segment", closer)


def arm_labels(design: Design) -> dict[str, str]:
    """Each arm's label in ``design``'s report. The arms without a closing-tag setting of their own ran with the
    design's ``closer``: where that is not the package default (:data:`DEFAULT_CLOSE`), ``scale_sft`` is named by its
    setting rather than as the defaults, and the arm that trains with the default setting says so."""
    labels = {name: arm.label for name, arm in ARMS.items()}
    if design.closer != DEFAULT_CLOSE:
        labels["scale_sft"] = f"SCALe-SFT, closer as {design.closer}"
        for name in ARMS:
            if arm_closer(name) == DEFAULT_CLOSE:
                labels[name] += " (default)"
    return labels


#: docs/results.md part 1
_POWERED = Design(
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
    # 16 until the ninth session: seed 13 (+66.5 points) widened the spread of SCALe − vanilla to sd 22.2 points,
    # which needs about 22 seeds for +-10; 24 until the tenth: with 21 seeds the spread (sd 24.4) needs about 26
    # (docs/results.md, "Precision")
    max_claim_seeds=32,
    # from the eighth session: by their spread over 8 seeds the closer-as-answer pairs need 23-32 seeds, beyond the
    # cap, so the added seeds go to the pair the claim rests on (docs/results.md, "Precision")
    precision_arms=("sft", "scale_sft"),
    # from the ninth session: every budget the report gives an interval for, not the claim budget alone (the 3-seed
    # intervals at 24 steps were wider than +-10 points; docs/results.md, "Precision")
    precision_budgets=(96, 24, 48),
)

DESIGNS: dict[str, Design] = {
    "powered": _POWERED,
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
        grpo_steps=1,
        grpo_prompts_per_step=1,
        num_generations=2,
        grpo_learning_rate=1e-5,
    ),
    # docs/results.md, Gemma 3: the powered design's families, sizes, rate grid and statistics on a second model, at
    # one SFT budget (the largest of the powered curve), 3 seeds; the rate chosen on vanilla alone, as there
    "gemma3": dataclasses.replace(
        _POWERED,
        max_claim_seeds=0,
        model="gemma3",
        budgets=(96,),
        claim_seeds=3,
        const_seeds=0,
        # SCALe at the package defaults, and the other of think / answer (the setting the powered study ran)
        arms=("sft", "scale_sft", "scale_close" if DEFAULT_CLOSE == "think" else "scale_think"),
        const_arms=(),
        closer=DEFAULT_CLOSE,
    ),
    # docs/results.md, the closing tag (rule 7): the powered design's families, sizes and rate rule at 24 SFT steps,
    # where its only skipped closer was, 6 seeds of vanilla and of each think_close_segment setting (per setting 576
    # dev and 2,400 held-out completions); the runs the powered study already made here are reused (study --reuse
    # docs/results/smollm2.json)
    "closing": dataclasses.replace(
        _POWERED,
        budgets=(24,),
        claim_budget=24,
        seeds=tuple(range(6)),
        max_claim_seeds=0,
        precision_arms=(),
        precision_budgets=(),
        const_seeds=0,
        arms=("sft", "scale_sft", "scale_close", "scale_own"),
        const_arms=(),
        dev_every_seed=True,
    ),
    # docs/results.md, the headline ("SCALe-SFT alone matches SFT + GRPO at about a seventh of the time; SCALe-SFT +
    # GRPO is best"): the answer-bound family (where vanilla SFT left most room in every study so far), the powered
    # design's sizes and rule at 96 SFT steps, 3 seeds, and a GRPO stage sized to take several times the SFT stage,
    # its setting chosen on vanilla alone from grpo_grid
    # docs/results.md, the default's precision: the closing-tag study made the closer as answer the default after the
    # powered study, which watched the closer as think; this design is that study's vanilla and closer-as-answer arms
    # with the precision rule watching their pair (the same fingerprint: its runs are reused, study --reuse
    # docs/results/smollm2.json), so the default's intervals reach ±10 points as the claim needs
    "answer": dataclasses.replace(
        _POWERED,
        arms=("sft", "scale_close"),
        const_seeds=0,
        const_arms=(),
        precision_arms=("sft", "scale_close"),
    ),
    "headline": dataclasses.replace(
        _POWERED,
        max_claim_seeds=0,
        families=("mc",),
        budgets=(96,),
        claim_seeds=3,
        const_seeds=0,
        arms=("sft", "scale_sft", "sft_grpo", "scale_sft_grpo"),
        const_arms=(),
        grpo_steps=150,
        grpo_prompts_per_step=2,
        num_generations=4,
        grpo_learning_rate=1e-5,
        grpo_grid=((1e-5, 4, 2), (3e-5, 4, 2), (1e-5, 8, 2)),
        closer=DEFAULT_CLOSE,
    ),
    # docs/results.md part 2 (12 SFT steps, 32 questions: too small to decide anything), bench-paper's default for a
    # pretrained model; the settings of that study, with every arm at the tuned rate
    "short": Design(
        model="smollm2",
        families=("mc", "arith"),
        n_train=400,
        n_dev=16,
        n_eval=32,
        budgets=(12,),
        claim_budget=12,
        claim_seeds=3,
        curve_seeds=3,
        const_budget=12,
        const_seeds=0,
        batch_size=8,
        lr_grid=(1.5e-3, 4.5e-3),
        lora_r=16,
        max_new_tokens=100,
        eval_batch_size=32,
        target_accuracy=0.7,
        arms=("zero_shot", "sft", "scale_sft", "scale_token", "sft_grpo", "scale_sft_grpo"),
        const_arms=(),
        grpo_steps=2,
        grpo_prompts_per_step=2,
        num_generations=4,
        grpo_learning_rate=1e-5,
    ),
    # docs/results.md part 3: the tiny model from scratch (bench-paper --model tiny)
    "scratch": Design(
        model="tiny",
        families=("arith_small",),
        n_train=4000,
        n_dev=0,
        n_eval=256,
        budgets=(500,),
        claim_budget=500,
        claim_seeds=3,
        curve_seeds=3,
        const_budget=500,
        const_seeds=0,
        batch_size=16,
        lr_grid=(3e-3,),
        lora_r=0,
        max_new_tokens=128,
        eval_batch_size=64,
        target_accuracy=0.7,
        arms=("sft", "scale_sft", "sft_grpo", "scale_sft_grpo"),
        const_arms=(),
        warmup_divisor=20,
        grpo_steps=20,
        grpo_prompts_per_step=4,
        num_generations=4,
        grpo_learning_rate=2e-5,
    ),
    "scratch-smoke": Design(
        model="tiny",
        families=("arith_small",),
        n_train=64,
        n_dev=0,
        n_eval=8,
        budgets=(4,),
        claim_budget=4,
        claim_seeds=2,
        curve_seeds=2,
        const_budget=4,
        const_seeds=0,
        batch_size=4,
        lr_grid=(3e-3,),
        lora_r=0,
        max_new_tokens=16,
        eval_batch_size=8,
        target_accuracy=0.7,
        arms=("sft", "scale_sft", "sft_grpo", "scale_sft_grpo"),
        const_arms=(),
        warmup_divisor=20,
        grpo_steps=1,
        grpo_prompts_per_step=2,
        num_generations=2,
        grpo_learning_rate=1e-4,
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
    #: a GRPO tuning run: the index of its setting in the design's ``grpo_grid``
    grpo: int | None = None

    def key(self, lr: float) -> str:
        base = f"{self.family}/{self.budget}/{self.arm}/seed{self.seed}/lr{lr:g}"
        return base if self.grpo is None else f"{base}/grpo{self.grpo}"


def plan(
    design: Design,
    families: tuple[str, ...] | None = None,
    arms: tuple[str, ...] | None = None,
    runs: list[dict[str, Any]] | None = None,
) -> list[Planned]:
    """Every run of the study, in the order they run: the vanilla-only tuning first (it fixes each budget's rate; a
    grid of one rate has none; then the GRPO setting, :func:`chosen_grpo`), then the curve seeds at every budget, the
    remaining seeds at the claim budget, the seeds the precision rule adds given ``runs`` (the finished runs;
    :func:`claim_seed_count`), then the constant-LR arms."""
    families = families or design.families
    wanted = arms or tuple(ARMS)
    tuned = len(design.lr_grid) > 1
    grpo_tuned = grpo_is_tuned(design) and "sft_grpo" in wanted
    out: list[Planned] = []
    if tuned:
        for budget in design.budgets:
            for family in families:
                out += [Planned(family, "sft", 0, budget, lr, tuning=True) for lr in design.lr_grid]
    if grpo_tuned:
        for family in families:
            out += [Planned(family, "sft_grpo", 0, design.claim_budget, None, tuning=True, grpo=i)
                    for i in range(len(design.grpo_grid))]  # fmt: skip

    def own_tuning_run(arm: str, seed: int, budget: int) -> bool:
        # vanilla's seed-0 run is its tuning run at the chosen rate, and vanilla + GRPO's at the chosen setting
        if seed != 0:
            return False
        return (tuned and arm == "sft") or (grpo_tuned and arm == "sft_grpo" and budget == design.claim_budget)

    def arm_runs(seed: int, budget: int, names: tuple[str, ...]) -> list[Planned]:
        # the untrained arm runs once (see Arm.trainer)
        return [
            Planned(f, a, seed, budget, None)
            for f in families
            for a in names
            if a in wanted and not own_tuning_run(a, seed, budget) and ARMS[a].trainer != "none"
        ]

    if "zero_shot" in design.arms and "zero_shot" in wanted:
        out += [Planned(f, "zero_shot", 0, design.claim_budget, design.lr_grid[0]) for f in families]

    if design.seeds is not None:
        for seed in design.seeds:
            for budget in design.budgets:
                out += arm_runs(seed, budget, design.arms)
    else:
        for seed in range(design.curve_seeds):
            for budget in design.budgets:
                out += arm_runs(seed, budget, design.arms)
        for seed in range(design.curve_seeds, design.claim_seeds):
            out += arm_runs(seed, design.claim_budget, design.arms)
        extra = tuple(a for a in design.arms if not design.precision_arms or a in design.precision_arms)
        for budget in watched_budgets(design) if runs is not None else ():
            first = max(design.curve_seeds, _first_seeds(design, budget))  # the curve's seeds run at every budget
            for family in families:
                for seed in range(first, claim_seed_count(design, runs, family, budget)):
                    out += [p for p in arm_runs(seed, budget, extra) if p.family == family]
    for seed in range(design.const_seeds):
        out += arm_runs(seed, design.const_budget, design.const_arms)
    return list(dict.fromkeys(out))


def claim_pairs(design: Design | dict[str, Any]) -> list[tuple[str, str]]:
    """The paired differences (:data:`PAIRS`) at the claim budget whose two arms the design trains there."""
    arms = design["arms"] if isinstance(design, dict) else design.arms
    trained = {a for a in arms if ARMS[a].trainer != "none"}
    return [(a, b) for a, b in PAIRS if a in trained and b in trained]


def precision_pairs(design: Design | dict[str, Any]) -> list[tuple[str, str]]:
    """The claim pairs (:func:`claim_pairs`) the precision rule watches: both arms in ``precision_arms`` (all when
    it is empty)."""
    watched = design.get("precision_arms") if isinstance(design, dict) else design.precision_arms
    return [(a, b) for a, b in claim_pairs(design) if not watched or (a in watched and b in watched)]


def watched_budgets(design: Design) -> tuple[int, ...]:
    """The budgets the precision rule watches, in the order their added seeds run: ``precision_budgets`` (the claim
    budget when it is empty), only those the design trains."""
    return tuple(b for b in design.precision_budgets or (design.claim_budget,) if b in design.budgets)


def _first_seeds(design: Design, budget: int) -> int:
    """The seeds ``budget`` has before the precision rule adds any: ``claim_seeds`` at the claim budget,
    ``curve_seeds`` at the others."""
    return design.claim_seeds if budget == design.claim_budget else design.curve_seeds


def _half_width(cells: dict, family: str, budget: int, arm: str, base: str, seeds: range) -> float:
    diffs = [cells[family, budget, arm][s]["accuracy"] - cells[family, budget, base][s]["accuracy"] for s in seeds]
    return stats.t_interval(diffs)["half_width"]


def claim_seed_count(design: Design, runs: list[dict[str, Any]], family: str, budget: int | None = None) -> int:
    """How many seeds ``family`` has at ``budget`` (default: the claim budget) under the precision rule, given the
    finished ``runs``: ``claim_seeds`` (``curve_seeds`` at another budget), plus one for each time that all seeds so
    far had run and some paired difference there that the rule watches (:func:`precision_pairs`, over exactly those
    seeds) still had a 95% interval wider than ``target_half_width``; at most ``max_claim_seeds``. Only at the
    budgets the rule watches (:func:`watched_budgets`). The rule sees the spread of the differences, never their
    mean."""
    budget = design.claim_budget if budget is None else budget
    n = _first_seeds(design, budget)
    pairs = precision_pairs(design)
    if design.seeds is not None or design.max_claim_seeds <= n or not pairs or budget not in watched_budgets(design):
        return n
    cells = _cells(runs, dataclasses.asdict(design))
    while n < design.max_claim_seeds:
        if any(s not in cells.get((family, budget, a), {}) for pair in pairs for a in pair for s in range(n)):
            return n  # the seeds so far have not all run yet
        if max(_half_width(cells, family, budget, a, b, range(n)) for a, b in pairs) <= design.target_half_width:
            return n
        n += 1
    return n


def seeds_for_width(sd: float, target: float, most: int = 200) -> int | None:
    """The fewest seeds whose 95% t interval of a mean is at most +- ``target`` wide when the differences spread with
    standard deviation ``sd`` (None: more than ``most``)."""
    for n in range(2, most + 1):
        if stats.t_quantile_975(n - 1) * sd / math.sqrt(n) <= target:
            return n
    return None


def is_done(planned: Planned, runs: list[dict[str, Any]]) -> bool:
    """Whether ``runs`` hold ``planned`` (a tuning run at its rate; an arm's run at whatever rate it was given)."""
    prefix = planned.key(0.0).rsplit("/lr", 1)[0] + "/lr"
    if planned.lr is not None:
        return any(r["key"] == planned.key(planned.lr) for r in runs)
    if planned.grpo is not None:
        return any(r["key"].startswith(prefix) and r["key"].endswith(f"/grpo{planned.grpo}") for r in runs)
    return any(r["key"].startswith(prefix) and not r.get("tuning") for r in runs)


def grpo_is_tuned(design: Design | dict[str, Any]) -> bool:
    """Whether the design chooses its GRPO setting on vanilla alone (two or more in ``grpo_grid``, a GRPO arm)."""
    get = design.get if isinstance(design, dict) else lambda k: getattr(design, k)
    return len(get("grpo_grid") or ()) > 1 and "sft_grpo" in (get("arms") or ())


# -- the results file -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock next to the results file: worker processes may append to it and claim runs side by side."""
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


# -- claims: several worker processes (or commands) share one results file as a queue of runs ------------------------

#: seconds a worker with nothing it may start waits before it looks again (runs other workers hold may finish, and
#: the precision rule may then add seeds)
CLAIM_POLL_S = 30.0


def planned_id(planned: Planned) -> str:
    """A run's name in the claims file (its results key, with ``lr-tuned`` where the budget's tuned rate applies)."""
    rate = "lr-tuned" if planned.lr is None else f"lr{planned.lr:g}"
    base = f"{planned.family}/{planned.budget}/{planned.arm}/seed{planned.seed}/{rate}"
    return base if planned.grpo is None else f"{base}/grpo{planned.grpo}"


def _claims_path(path: Path) -> Path:
    return Path(f"{path}.claims")


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the process that holds a claim still runs. A claim from another machine cannot be checked and counts
    as held (delete ``<results>.claims`` to clear one left by a machine that went away)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    # the pid may have been reused by a process started since: where the start time is known, it must match
    return holder.get("started") is None or holder["started"] == _process_start(int(holder["pid"]))


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``; None where there is no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in parentheses may hold spaces


def _mine(holder: dict[str, Any]) -> bool:
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _live_claims(path: Path) -> dict[str, dict[str, Any]]:
    """The claims of ``path`` whose process still runs (call it under :func:`_locked`)."""
    file = _claims_path(path)
    claims = json.loads(file.read_text()) if file.is_file() else {}
    return {k: v for k, v in claims.items() if _alive(v)}


def _write_claims(path: Path, claims: dict[str, dict[str, Any]]) -> None:
    file = _claims_path(path)
    if not claims:
        file.unlink(missing_ok=True)
        return
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(claims, indent=1) + "\n")
    tmp.replace(file)


def claim(path: Path, planned: Planned) -> bool:
    """Take ``planned`` for this process: False when the results file already holds it or another live process has
    taken it. A worker runs only what it claimed, so workers (``--jobs``) and further commands on the same results
    file never train the same run twice; the claim of a process that died lapses."""
    with _locked(path):
        if is_done(planned, load(path).get("runs", [])):
            return False
        claims = _live_claims(path)
        holder = claims.get(planned_id(planned))
        if holder is not None and not _mine(holder):
            return False
        claims[planned_id(planned)] = {"pid": os.getpid(), "host": socket.gethostname(),
                                       "started": _process_start(os.getpid()),
                                       "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}  # fmt: skip
        _write_claims(path, claims)
        return True


def release(path: Path, planned: Planned) -> None:
    """Give back this process's claim on ``planned`` (run finished, failed or interrupted)."""
    with _locked(path):
        claims = _live_claims(path)
        if _mine(claims.get(planned_id(planned), {})):
            del claims[planned_id(planned)]
        _write_claims(path, claims)


def held_by_others(path: Path) -> set[str]:
    """The runs (:func:`planned_id`) that other live processes hold now."""
    with _locked(path):
        return {k for k, v in _live_claims(path).items() if not _mine(v)}


def _trains_on(design: Design) -> tuple[str, str]:
    """(device, precision) the runs of ``design`` train in on this machine (``--precision`` included)."""
    from .common import on_cuda

    return ("cuda" if on_cuda() else "cpu", MODELS[design.model].precision())


def _check_design(data: dict[str, Any], design_name: str, design: Design, path: Path) -> None:
    """One results file = one design on one kind of device and precision (paired runs must not differ in them)."""
    saved = data.get("design")
    if saved is not None and saved.get("fingerprint") != design.fingerprint():
        raise SystemExit(
            f"{path} holds runs of another design ({saved.get('name')}: {saved.get('fingerprint')}); "
            f"use a new results file for design {design_name!r} (study: --results; bench-paper: --output-dir, or "
            "leave out --resume to start afresh)"
        )
    here = _trains_on(design)
    there = {(r["device"], r["precision"]) for r in data.get("runs", [])}
    if there and there != {here}:
        raise SystemExit(
            f"{path} holds runs made on {sorted(there)}; this machine trains on {here}: use a new results file "
            "(study: --results; bench-paper: --output-dir; paired runs must not differ in device or precision), or "
            "resume this one in its precision (study --precision)"
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


def reuse_runs(source: str | Path, design_name: str, design: Design, results: str | Path | None = None) -> int:
    """Copy into ``results`` (default: the design's own file) the runs of ``source`` that ``design`` plans and that
    ``results`` lacks; returns how many. ``source`` must hold a design with the same fingerprint (its runs are then
    the runs this design would make: same data, rate rule, seeds and arms' settings), and its runs must have been made
    on the device and in the precision this design trains in here. Each copy records ``reused_from``: the source's design
    name. The plan's precision rule sees the copies like any run."""
    src = load(Path(source))
    saved = src.get("design") or {}
    if saved.get("fingerprint") != design.fingerprint():
        raise SystemExit(
            f"{source} holds runs of design {saved.get('name')!r} with another fingerprint ({saved.get('fingerprint')}) "
            f"than {design_name!r} ({design.fingerprint()}): its runs are not this design's runs"
        )
    path = Path(results or default_results_path(design, design_name))
    here = _trains_on(design)
    copied = 0
    while True:  # the plan can grow as runs arrive (the precision rule): copy until nothing more matches
        runs = load(path).get("runs", [])
        wanted = [p for p in plan(design, runs=runs) if not is_done(p, runs)]
        have = {r["key"] for r in runs}
        new = [r for r in src.get("runs", []) if r["key"] not in have and any(is_done(p, [r]) for p in wanted)]
        if not new:
            return copied
        for record in new:
            if (record["device"], record["precision"]) != here:
                raise SystemExit(f"{source}: run {record['key']} was made on {record['device']} {record['precision']}; "
                                 f"this design trains on {here[0]} {here[1]} here (paired runs must not differ in "
                                 "device or precision; study --precision)")  # fmt: skip
            append_run(path, design_name, design, {**record, "reused_from": saved.get("name")})
            copied += 1


# -- choosing the rate and the closing-tag default (vanilla only / dev split only) ----------------------------


def chosen_lr(runs: list[dict[str, Any]], family: str, budget: int, grid: tuple[float, ...]) -> float | None:
    """The budget's rate: vanilla seed-0 tuning runs, best dev accuracy, ties to the smaller rate; None until every
    rate of the grid has run (a grid of one rate: that rate)."""
    if len(grid) == 1:
        return grid[0]
    tried = {r["lr"]: r for r in _lr_tuning(runs, family, budget)}
    if any(lr not in tried for lr in grid):
        return None
    return max(grid, key=lambda lr: (tried[lr]["dev_accuracy"], -lr))


def _lr_tuning(runs: list[dict[str, Any]], family: str, budget: int) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("tuning") and r["arm"] == "sft" and r["family"] == family
            and r["sft_steps"] == budget]  # fmt: skip


def chosen_grpo(
    runs: list[dict[str, Any]], family: str, budget: int, grid: tuple[tuple[float, int, int], ...]
) -> int | None:
    """The GRPO setting (its index in ``grid``): vanilla SFT + GRPO tuning runs (seed 0, ``budget``), best dev
    accuracy, ties to fewer generations x prompts, then to the smaller rate; None until every setting has run."""
    tried = {r.get("grpo_setting"): r for r in runs if r.get("tuning") and r["arm"] == "sft_grpo"
             and r["family"] == family and r["sft_steps"] == budget}  # fmt: skip
    if any(i not in tried for i in range(len(grid))):
        return None
    return max(range(len(grid)), key=lambda i: (tried[i]["dev_accuracy"], -grid[i][1] * grid[i][2], -grid[i][0]))


def grpo_setting_of(design: Design, planned: Planned, runs: list[dict[str, Any]]) -> tuple[bool, int | None]:
    """(ready, setting) of a GRPO run: its own setting for a tuning run, the chosen one otherwise (not ready while
    the tuning is unfinished); ``None``: the design's ``grpo_*`` fields (no GRPO arm, or nothing to choose from)."""
    if ARMS[planned.arm].grpo_after is None or not design.grpo_grid:
        return True, None
    if planned.grpo is not None:
        return True, planned.grpo
    if len(design.grpo_grid) == 1:
        return True, 0
    chosen = chosen_grpo(runs, planned.family, design.claim_budget, design.grpo_grid)
    return chosen is not None, chosen


def with_grpo_setting(design: Design, setting: int | None) -> Design:
    """``design`` with its ``grpo_*`` fields set to ``grpo_grid[setting]`` (``None``: unchanged)."""
    if setting is None:
        return design
    rate, generations, prompts = design.grpo_grid[setting]
    return dataclasses.replace(design, grpo_learning_rate=rate, num_generations=generations,
                               grpo_prompts_per_step=prompts)  # fmt: skip


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


#: each ``think_close_segment`` setting and the SCALe-SFT arm that trains with it (read from the arms' options)
SETTING_ARMS = {arm_closer(arm, "think"): arm for arm in ("scale_sft", "scale_close", "scale_own")}


def closing_tag_default(runs: list[dict[str, Any]], budget: int) -> dict[str, Any] | None:
    """Rule 7 (the closing-tag study): over the seeds and families where every ``think_close_segment`` setting has a
    dev result at ``budget``, the setting with the fewest dev completions that skip the closer (``dev_dropped_closer``
    minus ``dev_cut_at_limit``: stopped or answered without closing the trace), then the most correct dev answers,
    then ``think``. None until some seed has all three."""
    by = {(r["family"], r["seed"], r["arm"]): r for r in runs if r["sft_steps"] == budget and r.get("dev_n")}
    cells = sorted({(f, s) for f, s, _ in by if all((f, s, a) in by for a in SETTING_ARMS.values())})
    if not cells:
        return None
    total = {}
    for setting, arm in SETTING_ARMS.items():
        rows = [by[f, s, arm] for f, s in cells]
        total[setting] = {
            "dev_skipped": sum(
                round((r["dev_dropped_closer_rate"] - r.get("dev_cut_at_limit_rate", 0.0)) * r["dev_n"]) for r in rows
            ),
            "dev_correct": sum(round(r["dev_accuracy"] * r["dev_n"]) for r in rows),
            "dev_n": sum(r["dev_n"] for r in rows),
        }
    order = list(SETTING_ARMS)  # ties: the earlier setting, think first
    chosen = min(order, key=lambda k: (total[k]["dev_skipped"], -total[k]["dev_correct"], order.index(k)))
    return {"cells": [list(c) for c in cells], **total, "chosen": chosen}


# -- one run ----------------------------------------------------------------------------------------------------


def score(
    family: str,
    completions: list[str],
    samples: list[dict[str, Any]],
    tokenizer: Any,
    cut: list[bool] | None = None,
) -> dict[str, Any]:
    """Per question: correct (``accuracy_reward``), malformed (``format_reward == 0``), dropped closer (malformed
    with a ``<think>`` opener and no ``</think>``) and, given ``cut`` (:func:`~.common.generate_marked`'s flags),
    cut at the limit (a dropped closer whose generation the token limit ended: the trace ran out of room, it did not
    skip its closer); overall: the mean think length (tokens through ``</think>``) and,
    for the built-in families, trace correct (the trace's last number is the gold value) and answer = trace (the
    answer stands for the trace's value)."""
    from ...rewards import accuracy_reward, extract_answer, format_reward
    from .common import think_part

    acc = accuracy_reward(completions, solution=[s["solution"] for s in samples])
    fmt = format_reward(completions)
    think_tokens, trace_ok, agree = [], [], []
    for text, sample in zip(completions, samples):
        think = think_part(text)
        think_tokens.append(len(tokenizer(think, add_special_tokens=False)["input_ids"]))
        value = tasks.trace_value(family, think)
        if "value" in sample:
            trace_ok.append(value is not None and value == sample["value"])
            answer = tasks.answer_value(family, extract_answer(text), sample)
            agree.append(value is not None and answer is not None and answer == value)
    n = max(len(completions), 1)
    dropped = [f == 0.0 and "<think>" in c and "</think>" not in c for c, f in zip(completions, fmt)]
    return {
        "correct": [bool(a) for a in acc],
        "malformed": [f == 0.0 for f in fmt],
        "dropped_closer": dropped,
        "cut_at_limit": None if cut is None else [d and c for d, c in zip(dropped, cut, strict=True)],
        "mean_think_tokens": sum(think_tokens) / n,
        "trace_accuracy": sum(trace_ok) / n if trace_ok else None,
        "answer_trace_agreement": sum(agree) / n if trace_ok else None,
    }


def _bits(flags: list[bool]) -> str:
    return "".join("1" if f else "0" for f in flags)


def _generate(
    spec: ModelSpec, model: Any, tokenizer: Any, samples: list[dict], design: Design, phase: str
) -> tuple[list[str], list[bool]]:
    """The completions of ``samples`` and whether the generation limit cut each; ``phase``: what the progress says."""
    import torch

    from .common import generate_marked

    dtype = torch.bfloat16 if spec.precision() == "bf16" else None
    prompts = [spec.prompt(s["prompt"]) for s in samples]
    marked = generate_marked(model, tokenizer, prompts, design.max_new_tokens, design.eval_batch_size, dtype=dtype,
                             phase=phase)  # fmt: skip
    return [text for text, _ in marked], [cut for _, cut in marked]


def run_one(
    design: Design,
    planned: Planned,
    lr: float,
    data: tuple[list, list, list],
    work_dir: Path,
    sft: tuple[Any, float, list[dict]] | None = None,
    completions_dir: Path | None = None,
    grpo_setting: int | None = None,
) -> tuple[dict[str, Any], tuple[Any, float, list[dict]]]:
    """Train one arm (SFT, or ``sft``'s model if given; then the GRPO stage of a GRPO arm), evaluate it (held-out;
    dev too for the tuning runs and the seed-0 SCALe runs); returns its record and the SFT result (model, seconds,
    log), which the arm's GRPO twin continues from."""
    import torch

    from .common import machine, on_cuda, progress, segment_ce, write_completions
    from .train import GRPO_LOG_KEYS, SFT_LOG_KEYS, compact_log, train_grpo, train_sft, training_rows

    spec = MODELS[design.model]
    train, dev, held_out = data
    arm = ARMS[planned.arm]
    options = arm_options(design, planned.arm)
    if sft is None:
        sft = train_sft(spec, arm.trainer, planned.budget, design.batch_size, lr, planned.seed, train, work_dir,
                        lora_r=design.lora_r, warmup_divisor=design.warmup_divisor, lr_scheduler=arm.lr_scheduler,
                        scale_options=options)  # fmt: skip
    model, sft_time, history = sft
    grpo_time, grpo_history = 0.0, []
    grpo_design = with_grpo_setting(design, grpo_setting)
    if arm.grpo_after is not None:
        model, grpo_time, grpo_history = train_grpo(spec, model, grpo_design, planned.seed, train, work_dir)
    tokenizer = spec.tokenizer()
    model.to("cuda" if on_cuda() else "cpu")
    t0 = time.perf_counter()
    completions, cut = _generate(spec, model, tokenizer, held_out, design, "held-out")
    scored = score(planned.family, completions, held_out, tokenizer, cut)
    progress("held-out segment CE")
    ce = segment_ce(model, tokenizer, training_rows(spec, held_out), design.eval_batch_size)
    if completions_dir is not None:
        write_completions(completions_dir / (planned.key(lr).replace("/", "_") + ".jsonl"), held_out, completions)
    record: dict[str, Any] = {
        "key": planned.key(lr),
        "model": spec.name,
        "family": planned.family,
        "arm": planned.arm,
        "seed": planned.seed,
        "sft_steps": planned.budget,
        "grpo_steps": design.grpo_steps if arm.grpo_after is not None else 0,
        "grpo_setting": grpo_setting,
        "n_eval": len(held_out),
        "accuracy": sum(scored["correct"]) / len(held_out),
        "malformed_rate": sum(scored["malformed"]) / len(held_out),
        "dropped_closer_rate": sum(scored["dropped_closer"]) / len(held_out),
        "sft_time_s": sft_time,
        "grpo_time_s": grpo_time,
        "lr": lr,
        "lr_scheduler": arm.lr_scheduler,
        "tuning": planned.tuning,
        "scale_options": options if arm.trainer == "scale_sft" else None,
        "correct": _bits(scored["correct"]),
        "malformed": _bits(scored["malformed"]),
        "dropped_closer": _bits(scored["dropped_closer"]),
        "cut_at_limit": _bits(scored["cut_at_limit"]),
        **{k: scored[k] for k in ("mean_think_tokens", "trace_accuracy", "answer_trace_agreement")},
        **ce,
        "final_train_loss": next((row["loss"] for row in reversed(history) if "loss" in row), None),
        "device": "cuda" if on_cuda() else "cpu",
        "precision": spec.precision(),
        **machine(),
        "torch_threads": torch.get_num_threads(),
        "eval_time_s": time.perf_counter() - t0,
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sample_completions": completions[:2],
        "log_history": compact_log(history, SFT_LOG_KEYS),
    }
    if arm.grpo_after is not None:
        record.update({k: getattr(grpo_design, k) for k in ("grpo_learning_rate", "num_generations",
                                                            "grpo_prompts_per_step")})  # fmt: skip
    if grpo_history:
        record["grpo_log_history"] = compact_log(grpo_history, GRPO_LOG_KEYS)
    if dev and evaluates_dev(design, planned):
        dev_done, dev_cut = _generate(spec, model, tokenizer, dev, design, "dev")
        dev_scored = score(planned.family, dev_done, dev, tokenizer, dev_cut)
        record.update(
            dev_n=len(dev),
            dev_accuracy=sum(dev_scored["correct"]) / len(dev),
            dev_malformed_rate=sum(dev_scored["malformed"]) / len(dev),
            dev_dropped_closer_rate=sum(dev_scored["dropped_closer"]) / len(dev),
            dev_cut_at_limit_rate=sum(dev_scored["cut_at_limit"]) / len(dev),
        )
    return record, sft


def evaluates_dev(design: Design, planned: Planned) -> bool:
    """Whether a run is scored on the dev split too: the tuning runs (the rules choose on them) and the SCALe-SFT runs
    of seed 0 (rule 6), of every seed with ``dev_every_seed`` (rule 7)."""
    arm = ARMS[planned.arm]
    scale_sft = arm.trainer == "scale_sft" and arm.grpo_after is None
    return planned.tuning or (scale_sft and (planned.seed == 0 or design.dev_every_seed))


# -- the whole study --------------------------------------------------------------------------------------------


def splits_of(design: Design, families: tuple[str, ...]) -> dict[str, tuple[list, list, list]]:
    """(train, dev, held-out) per family; ``user``: the design's files, dev the first quarter of the eval file (at
    most ``n_dev``) when the grid has rates to choose from."""
    out = {}
    for family in families:
        if family == "user":
            if design.train_file is None or design.eval_file is None:
                raise SystemExit("your data: --train-file and --eval-file go together")
            train = tasks.load_user_file(design.train_file, design.answer_column)
            held = tasks.load_user_file(design.eval_file, design.answer_column)
            chooses = len(design.lr_grid) > 1 or grpo_is_tuned(design)
            n_dev = min(design.n_dev, max(1, len(held) // 4)) if chooses else 0
            out[family] = (train, held[:n_dev], held[n_dev:])
        elif family in tasks.FAMILIES:
            out[family] = tasks.make_splits(family, design.n_train, design.n_dev, design.n_eval)
        else:
            raise SystemExit(f"--family {family}: choose from {sorted(tasks.FAMILIES)}")
        if len(design.lr_grid) > 1 and not out[family][1]:
            raise SystemExit(f"family {family}: a learning-rate grid of {len(design.lr_grid)} rates needs a dev split")
        if grpo_is_tuned(design) and not out[family][1]:
            raise SystemExit(f"family {family}: choosing among {len(design.grpo_grid)} GRPO settings needs a dev split")
    return out


def run(
    design_name: str = "powered",
    results: str | Path | None = None,
    families: list[str] | None = None,
    arms: list[str] | None = None,
    threads: int = 1,
    max_runs: int | None = None,
    update_docs: bool = False,
    *,
    design: Design | None = None,
    jobs: int = 1,
    work_dir: str | Path | None = None,
    completions_dir: str | Path | None = None,
    image: str | None = None,
    estimate: bool = True,
    progress_file: str | Path | None = None,
) -> dict[str, Any]:
    """Run what is missing from ``results`` (resumable at run granularity), then write the report.

    ``design``: the design to run (default ``DESIGNS[design_name]``; ``design_name`` is what the results file calls
    it); ``jobs`` > 1: that many worker processes side by side (:func:`_worker_processes`), appending to the same
    file, after the time estimate is measured in a process of its own (:func:`_estimate_apart`: the command then
    holds no model while its workers train); ``work_dir``: the trainers' output folder; ``completions_dir``: every
    held-out completion, one JSONL per run; ``image``: the plot's path in the report (:func:`report`);
    ``estimate``: measure and print the time estimate first (a worker process does not: its command did);
    ``progress_file``: where the phase of the run in progress goes (a worker's, read by its command's progress bar),
    else the progress bar's own line."""
    from tqdm.auto import tqdm

    from .common import quiet_libraries, reporting_progress

    design = design or DESIGNS[design_name]
    spec = MODELS[design.model]
    path = Path(results or default_results_path(design, design_name))
    work = Path(work_dir or os.environ.get("SCALE_PLUGINS_STUDY_TMP", "study_tmp"))
    quiet_libraries(threads)
    fams = tuple(families or design.families)
    splits = splits_of(design, fams)
    arms_t = tuple(arms) if arms else None
    data = load(path)
    _check_design(data, design_name, design, path)
    todo_plan = plan(design, fams, arms_t, data.get("runs", []))
    missing = [p for p in todo_plan if not is_done(p, data.get("runs", []))]
    if "design" not in data:
        append_run(path, design_name, design, None)
    adapter = f"LoRA r={design.lora_r}" if spec.lora_targets is not None else spec.training
    print(
        f"study {design_name} ({spec.name} + {adapter}): families "
        f"{list(fams)}, budgets {list(design.budgets)} x batch {design.batch_size}, {design.n_eval} held-out / "
        f"{design.n_dev} dev questions per family; {len(todo_plan) - len(missing)} of {len(todo_plan)} runs already in "
        f"{path}",
        flush=True,
    )
    if max_runs is not None and max_runs < 0:
        raise ValueError(f"max_runs must be 0 or more, got {max_runs}")
    # --max-runs bounds the runs this command trains, its worker processes together (0: the estimate only)
    side_by_side = max(1, min(jobs, len(missing)))  # the estimate: the whole plan's wall time at --jobs
    workers = side_by_side if max_runs is None else max(1, min(side_by_side, max_runs))
    if missing and estimate:
        if spec.prepare is not None:
            spec.prepare()
        per_run = (
            _estimate_apart(design, missing, splits, threads)
            if workers > 1
            else estimate_seconds(design, missing, splits)
        )
        text = f"estimated time for the {len(missing)} missing runs: {sum(per_run.values()) / 3600:.1f} h"
        if side_by_side > 1:
            text += (f" of compute, {wall_estimate(list(per_run.values()), side_by_side) / 3600:.1f} h of wall time "
                     f"with {side_by_side} worker processes side by side")  # fmt: skip
        print(text + " (from a measured step)", flush=True)
    if workers > 1:
        assert max_runs is None or max_runs >= workers
        _worker_processes(design_name, design, path, fams, arms, threads, workers, work, completions_dir, missing,
                          max_runs)  # fmt: skip
        missing, max_runs = [], 0  # the workers trained this command's runs: it trains none itself
    bar = tqdm(total=len(missing), desc="study", unit="run", file=sys.stderr, dynamic_ncols=True)

    def show(text: str) -> None:
        if progress_file is None:
            bar.set_postfix_str(text)
        else:
            _write_progress(Path(progress_file), text)

    counted = set(missing)
    ran = 0
    sft_for: dict[tuple[str, int, int, str], tuple[Any, float, list[dict]]] = {}
    tried: set[Planned] = set()  # the runs this process trained: never trained again, even if not counted as done

    def settings_of(planned: Planned, runs: list[dict[str, Any]]) -> tuple[float | None, bool, int | None]:
        lr = planned.lr if planned.lr is not None else chosen_lr(runs, planned.family, planned.budget, design.lr_grid)
        ready, setting = grpo_setting_of(design, planned, runs)
        return lr, ready and lr is not None, setting

    while max_runs is None or ran < max_runs:
        if not missing:  # the precision rule may call for further seeds now, and runs other workers held may be in
            runs = load(path).get("runs", [])
            busy = held_by_others(path)
            todo = [p for p in plan(design, fams, arms_t, runs) if p not in tried and not is_done(p, runs)]
            missing = [p for p in todo if planned_id(p) not in busy and settings_of(p, runs)[1]]
            if not missing:
                if not busy:  # nothing left that could become ready: say what was not run, and why
                    for p in todo:
                        why = "the vanilla tuning of " + ("its budget" if settings_of(p, runs)[0] is None else
                                                          "the GRPO setting")  # fmt: skip
                        bar.write(f"skipped {p}: {why} has not finished")
                    break
                show("waiting for the runs other workers hold")
                time.sleep(CLAIM_POLL_S)  # other workers are training: their runs may unblock or add some
                continue
            bar.total += len(set(missing) - counted)
            counted |= set(missing)
            bar.refresh()
        planned = missing.pop(0)
        runs = load(path).get("runs", [])
        lr, ready, setting = settings_of(planned, runs)
        if not ready or not claim(path, planned):  # not ready yet, done or held by another worker: looked at again
            continue
        assert lr is not None
        tried.add(planned)
        arm = ARMS[planned.arm]
        twin = (planned.family, planned.budget, planned.seed, arm.grpo_after or "")
        key = planned.key(lr)
        try:
            with reporting_progress(lambda text, key=key: show(f"{key}: {text}")):
                record, sft = run_one(design, planned, lr, splits[planned.family], work,
                                      sft=None if planned.tuning else sft_for.pop(twin, None),
                                      completions_dir=Path(completions_dir) if completions_dir else None,
                                      grpo_setting=setting)  # fmt: skip
            grpo_twin = [a for a, x in ARMS.items() if x.grpo_after == planned.arm]
            if not planned.tuning and any(
                p.arm in grpo_twin and (p.family, p.budget, p.seed) == twin[:3] for p in missing
            ):
                # its GRPO twin continues from this SFT model (a tuning run's rate may not be the chosen one: its
                # twin trains SFT again, deterministically, at the chosen rate)
                sft_for[(planned.family, planned.budget, planned.seed, planned.arm)] = sft
            append_run(path, design_name, design, record)
        finally:
            release(path, planned)
        ran += 1
        bar.update(1)
        show(f"{record['key']}: acc {record['accuracy']:.2f}")
        bar.write(f"finished {record['key']}: accuracy {record['accuracy']:.3f}, SFT {record['sft_time_s']:.0f} s")
    bar.close()
    final = load(path)
    result = report(final, image=image)
    if update_docs:
        write_docs(result, results_key(design_name, design.model))
    print(result["markdown"])
    return result


#: the fields :func:`.common.machine` adds to a run: they describe where it ran, so a recheck never copies them
MACHINE_FIELDS = ("processor", "torch_version")
#: what a rerun must reproduce, question by question, before :func:`recheck` adds anything to a stored run
RECHECKED = ("correct", "malformed", "dropped_closer", "dev_accuracy", "dev_malformed_rate")


def merge_recheck(stored: dict[str, Any], rerun: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """A stored run and its rerun at the same settings: (the stored record with the fields it lacks taken from the
    rerun, and one more entry in its ``rechecked`` list saying when, what matched and what was added; the rerun's
    differing fields, empty) when the rerun reproduces every field of :data:`RECHECKED` the stored run has, else
    (None, the fields that differ). A stored value is never replaced: the record keeps the numbers its report was
    made from, and every recheck it went through."""
    differ = [k for k in RECHECKED if k in stored and stored[k] != rerun.get(k)]
    if differ or stored["key"] != rerun["key"]:
        return None, differ or ["key"]
    # what the rerun ran on describes the rerun, not the stored run: it goes to the entry, never into the record
    added = {k: v for k, v in rerun.items() if k not in stored and k not in ("rechecked", *MACHINE_FIELDS)}
    earlier = stored.get("rechecked", [])
    entry = {
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "reproduced": [k for k in RECHECKED if k in stored],
        "added": sorted(added),
        "sft_time_s": rerun.get("sft_time_s"),
        **{k: rerun[k] for k in MACHINE_FIELDS if k in rerun},
    }
    return {**stored, **added, "rechecked": [*(earlier if isinstance(earlier, list) else [earlier]), entry]}, []


def recheck(
    keys: list[str],
    design_name: str = "powered",
    results: str | Path | None = None,
    threads: int = 1,
    *,
    design: Design | None = None,
    work_dir: str | Path | None = None,
    completions_dir: str | Path | None = None,
) -> list[str]:
    """Run finished runs again (their stored rate, seed, budget and GRPO setting) and, where a rerun reproduces the
    stored per-question results (:func:`merge_recheck`), add the fields the stored record lacks, such as
    ``cut_at_limit`` for runs from before it was recorded; returns the keys that did not reproduce (left as they
    are). Training and generation are deterministic on one device and thread count, so a mismatch means the code or
    the environment changed since the run."""
    design = design or DESIGNS[design_name]
    path = Path(results or default_results_path(design, design_name))
    work = Path(work_dir or os.environ.get("SCALE_PLUGINS_STUDY_TMP", "study_tmp"))
    data = load(path)
    _check_design(data, design_name, design, path)
    by_key = {r["key"]: r for r in data.get("runs", [])}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise SystemExit(f"--recheck: no run {', '.join(unknown)} in {path}")
    from .common import quiet_libraries

    quiet_libraries(threads)
    spec = MODELS[design.model]
    if spec.prepare is not None:
        spec.prepare()
    stored_runs = [by_key[k] for k in keys]
    splits = splits_of(design, tuple(dict.fromkeys(r["family"] for r in stored_runs)))
    failed = []
    for stored in stored_runs:
        grpo = stored["key"].rsplit("/grpo", 1)[1] if "/grpo" in stored["key"] else None
        planned = Planned(stored["family"], stored["arm"], stored["seed"], stored["sft_steps"], stored["lr"],
                          tuning=bool(stored.get("tuning")), grpo=int(grpo) if grpo is not None else None)  # fmt: skip
        rerun, _ = run_one(design, planned, stored["lr"], splits[stored["family"]], work,
                           completions_dir=Path(completions_dir) if completions_dir else None,
                           grpo_setting=stored.get("grpo_setting"))  # fmt: skip
        merged, differ = merge_recheck(stored, rerun)
        if merged is None:
            failed.append(stored["key"])
            print(f"{stored['key']}: the rerun differs in {', '.join(differ)}; the stored run is left as it is",
                  flush=True)  # fmt: skip
            continue
        append_run(path, design_name, design, merged)
        last = merged["rechecked"][-1]
        print(f"{stored['key']}: reproduced ({', '.join(last['reproduced'])}); added {', '.join(last['added']) or 'nothing'}",
              flush=True)  # fmt: skip
    return failed


def _worker_processes(
    design_name: str,
    design: Design,
    path: Path,
    families: tuple[str, ...],
    arms: list[str] | None,
    threads: int,
    jobs: int,
    work: Path,
    completions_dir: str | Path | None,
    missing: list[Planned],
    max_runs: int | None = None,
) -> None:
    """``jobs`` worker processes (``threads`` torch threads each), each running :func:`run` over every family into
    the same results file: a worker trains the next run nobody holds (:func:`claim`), so the work balances however
    the runs' lengths and the families' counts differ, and appends are locked. ``max_runs``: the runs they train
    together, shared out as evenly as it divides (a worker whose share is done stops). Each logs to
    ``<work>/logs/worker<i>.log`` and trains in ``<work>/worker<i>``; a progress bar over the missing runs."""
    from tqdm.auto import tqdm

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    code = "import sys; from scale_plugins.tools.paper.study import worker_main; worker_main(sys.stdin.read())"
    bar = tqdm(total=len(missing), desc="study", unit="run", file=sys.stderr, dynamic_ncols=True)
    arms_t = tuple(arms) if arms else None
    known = set(plan(design, families, arms_t, load(path).get("runs", [])))
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    failed = []
    try:
        with _sigterm_as_interrupt():
            for i in range(jobs):
                name = f"worker{i}"
                call = {"design_name": design_name, "design": dataclasses.asdict(design), "results": str(path),
                        "families": list(families), "arms": arms, "threads": threads, "work_dir": str(work / name),
                        "completions_dir": str(completions_dir) if completions_dir else None,
                        "max_runs": None if max_runs is None else max_runs // jobs + (i < max_runs % jobs),
                        "estimate": False, "progress_file": str(logs / f"{name}.progress")}  # fmt: skip
                (logs / f"{name}.progress").unlink(missing_ok=True)  # an earlier command's
                log = (logs / f"{name}.log").open("w")
                # unbuffered: the log shows what a worker printed as it happens, not 8 kB later
                proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdin=subprocess.PIPE, stdout=log,
                                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(call))
                proc.stdin.close()
                running[name] = (proc, log)
            while running:
                time.sleep(2)
                for name, (proc, log) in list(running.items()):
                    if proc.poll() is not None:
                        log.close()
                        del running[name]
                        if proc.returncode != 0:
                            failed.append(name)
                runs = load(path).get("runs", [])
                counted = missing + [p for p in plan(design, families, arms_t, runs) if p not in known]  # + added seeds
                bar.total, bar.n = len(counted), sum(is_done(p, runs) for p in counted)
                phases = [_read_progress(logs / f"{name}.progress") for name in running]
                bar.set_postfix_str(" | ".join(p for p in phases if p), refresh=False)
                bar.refresh()
    finally:  # interrupted (Ctrl-C, a SIGTERM to this process alone): no worker outlives the command
        _stop_processes([proc for proc, _ in running.values()])
        for _, log in running.values():
            log.close()
    bar.close()
    if failed:
        tails = "\n".join(f"--- {f} ({logs / f}.log):\n" + (logs / f"{f}.log").read_text()[-2000:] for f in failed)
        raise SystemExit(f"the worker process(es) {failed} failed\n{tails}")


def _write_progress(path: Path, text: str) -> None:
    """A worker's phase, replaced whole (written aside, then renamed): its reader never sees half a line."""
    aside = path.with_name(path.name + ".tmp")
    aside.write_text(text + "\n")
    os.replace(aside, path)


def _read_progress(path: Path) -> str:
    """What :func:`_write_progress` wrote last; empty before the first phase (or if the file cannot be read)."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM raises KeyboardInterrupt here (in the main thread), so that ``finally`` blocks run: ``kill PID``
    of the study command then stops its worker processes too, as Ctrl-C (sent to the whole process group) does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate the processes still running, and kill those that have not exited 30 s later."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        proc.terminate()
    for proc in alive:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_main(call_json: str) -> None:
    """The entry point of one worker process of :func:`_worker_processes` (its call as JSON)."""
    call = json.loads(call_json)
    call["design"] = design_from_dict(call["design"])
    run(**call)


def results_key(design_name: str, model: str) -> str:
    """What a study's results are called: ``<model>`` for the powered design and a model's own design (its
    ``docs/results/<model>.json``, the docs' markers and plot), ``<model>_<design>`` for any other."""
    return model if design_name in ("powered", model) else f"{model}_{design_name}"


def default_results_path(design: Design, design_name: str = "powered") -> Path:
    """``docs/results/<key>.json`` (relative to a clone's root; :func:`results_key`)."""
    return MODELS[design.model].results_path().with_name(f"{results_key(design_name, design.model)}.json")


def _estimate_apart(design: Design, missing: list[Planned], splits: dict, threads: int) -> dict[Planned, float]:
    """:func:`estimate_seconds` in a short-lived process of its own. The model and the gradients it measures with
    would otherwise stay in the command's memory while its workers train (the allocator keeps freed pages):
    3 GB of a 24 GB machine with SmolLM2, enough for the out-of-memory killer to take a worker at its evaluation
    peak."""
    import concurrent.futures
    import multiprocessing

    from .common import quiet_libraries

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=quiet_libraries,
                                                initargs=(threads,)) as pool:  # fmt: skip
        return pool.submit(estimate_seconds, design, missing, splits).result()


def estimate_seconds(design: Design, missing: list[Planned], splits: dict) -> dict[Planned, float]:
    """Seconds of compute for each missing run (in their order), from one measured SFT step of the base model (with the
    design's LoRA where the model trains one; warm-up excluded), a measured model load and the measured generation
    of one batch: no machine rates in code."""
    import torch

    from .common import on_cuda
    from .train import training_rows

    spec = MODELS[design.model]
    model, tokenizer = spec.load(0), spec.tokenizer()
    if spec.lora_targets is not None:  # what the runs train: the adapters, not every weight
        import peft

        model = peft.get_peft_model(model, lora_config(spec, design.lora_r))
    device = "cuda" if on_cuda() else "cpu"
    model.to(device).train()
    family = missing[0].family
    rows = splits[family][0][: design.batch_size]
    if spec.data_format == "text":
        texts = [r["prompt"] + r["completion"] for r in training_rows(spec, rows)]
        prompts = [spec.prompt(r["prompt"]) for r in rows]
    else:
        texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows]
        prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    enc = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    dtype = torch.bfloat16 if spec.precision() == "bf16" else torch.float32

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = model(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    spec.load(0)
    load_s = time.perf_counter() - t0
    step()
    per_step = min(step() for _ in range(2))
    model.eval()
    tokenizer.padding_side = "left"
    penc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(**penc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    per_token = (time.perf_counter() - t0) / 8
    per_eval_batch = per_token * (design.eval_batch_size / len(rows)) ** 0.5 * design.max_new_tokens
    group = design.grpo_prompts_per_step * design.num_generations
    per_grpo_step = per_token * (group / len(rows)) ** 0.5 * design.max_new_tokens + per_step * group / len(rows)
    total: dict[Planned, float] = {}
    planned = {(p.family, p.budget, p.seed, p.arm) for p in missing}
    for p in missing:
        arm = ARMS[p.arm]
        evals = math.ceil(design.n_eval / design.eval_batch_size) + (
            math.ceil(design.n_dev / design.eval_batch_size) if evaluates_dev(design, p) else 0
        )
        sft_again = arm.grpo_after is None or (p.family, p.budget, p.seed, arm.grpo_after) not in planned
        trains = sft_again and arm.trainer != "none"
        seconds = (p.budget * per_step if trains else 0.0) + evals * per_eval_batch + 3 * load_s
        if arm.grpo_after is not None:
            seconds += design.grpo_steps * per_grpo_step
        total[p] = seconds
    return total


def wall_estimate(per_run: list[float], jobs: int) -> float:
    """Wall seconds of the runs' compute (:func:`estimate_seconds`, in the order they run) on ``jobs`` workers, each
    taking the next run when it is free (:func:`_worker_processes`): when the last worker finishes."""
    ends = [0.0] * max(1, min(jobs, len(per_run)))
    for seconds in per_run:
        ends[ends.index(min(ends))] += seconds
    return max(ends)


# -- the report: tables, sentences and the plot, from the results file alone ----------------------------------


def _cells(runs: list[dict[str, Any]], design: dict[str, Any]) -> dict[tuple[str, int, str], dict[int, dict]]:
    """{(family, budget, arm): {seed: run}} at each budget's tuned rate; vanilla's seed 0 is its tuning run there."""
    grid = tuple(design["lr_grid"])
    grpo_grid = tuple(tuple(g) for g in design.get("grpo_grid") or ())
    out: dict[tuple[str, int, str], dict[int, dict]] = {}
    for r in runs:
        lr = chosen_lr(runs, r["family"], r["sft_steps"], grid)
        if lr is None or not math.isclose(r["lr"], lr):
            continue
        if ARMS[r["arm"]].grpo_after is not None and grpo_is_tuned(design):
            # only the GRPO runs at the chosen setting (vanilla's seed 0: its tuning run there)
            chosen = chosen_grpo(runs, r["family"], design["claim_budget"], grpo_grid)
            if chosen is None or r.get("grpo_setting") != chosen:
                continue
        elif r.get("tuning") and r["arm"] != "sft":
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
    direction = "better" if ci["mean"] > 0 else "worse" if ci["mean"] < 0 else "different"
    if n < 2:
        head = f"{100 * abs(ci['mean']):.1f} points {direction}" if ci["mean"] else "no different"
        return f"{head} on its one seed so far (no interval yet)"
    word = "significant" if p["significant"] else "not significant"
    head = f"{100 * abs(ci['mean']):.1f} points {direction}" if ci["mean"] else "no different on average"
    # the exact sign-flip test beside the interval: with few seeds it cannot go below 2 / 2**n, and one seed of the
    # other sign lifts it, so a reader sees both answers where they disagree
    return f"{head} ({word}: 95% interval {_interval(ci)}, sign-flip p={p['sign_flip_p']:.2g}, {n} seeds)"


_ACCURACY_CELLS = (
    "Each cell: the mean over seeds, its 95% t interval across seeds in brackets (clipped to 0-100%; with 2 seeds "
    "the t factor is 12.7, so it is wide by construction), the seeds' own accuracies (up to 4 seeds; their standard "
    "deviation beyond), and the mean malformed and dropped-closer rates."
)


def _accuracy_cell(acc: list[float]) -> str:
    """One cell of the accuracy-by-budget table (:data:`_ACCURACY_CELLS`), up to its closing parenthesis."""
    ci = stats.t_interval(acc)
    if ci["n"] == 1:
        return f"{_pct(ci['mean'])} (1 seed"
    low, high = max(ci["low"], 0.0), min(ci["high"], 1.0)
    spread = (", ".join(f"{100 * a:.1f}" for a in acc) if len(acc) <= 4
              else f"sd {100 * statistics.stdev(acc):.1f}")  # fmt: skip
    return f"{_pct(ci['mean'])} [{100 * low:.1f}, {100 * high:.1f}] ({ci['n']} seeds: {spread}"


def _sft_time_lines(cells: dict, family: str, budgets: list[int], labels: dict[str, str]) -> list[str]:
    """SFT wall time of each SCALe arm against vanilla SFT's, paired by seed and budget: the two runs of a pair train
    the same steps on the same batches, so their ratio is the cost of the loss path (under the load of the moment)."""
    out = []
    for arm in ("scale_sft", "scale_close", "scale_think", "scale_token"):
        ratios = []
        for budget in budgets:
            mine, base = cells.get((family, budget, arm), {}), cells.get((family, budget, "sft"), {})
            ratios += [mine[s]["sft_time_s"] / base[s]["sft_time_s"] for s in sorted(set(mine) & set(base))
                       if base[s]["sft_time_s"] > 0]  # fmt: skip
        if ratios:
            out.append(
                f"SFT wall time, {labels[arm]} / vanilla SFT, paired by seed and budget: median "
                f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} pairs)."
            )
    return ["", *out] if out else []


def _dropped_closer_lines(
    cells: dict, families: list[str], budgets: list[int], max_new_tokens: int | None, labels: dict[str, str]
) -> list[str]:
    """A table per budget and arm of the held-out completions that never close the trace (``dropped_closer``), over
    every seed and family, with the families they came from and, where the runs recorded it (``cut_at_limit``), how
    many of them the generation limit cut (a trace that ran out of room, not a skipped closer); the closing-tag
    default must not leave any skipped closer."""
    arms = [a for a in ("sft", "scale_sft", "scale_close", "scale_own") if any(k[2] == a for k in cells)]
    rows, unknown_cause = [], False
    for budget in budgets:
        row = []
        for arm in arms:
            runs = {f: list(cells.get((f, budget, arm), {}).values()) for f in families}
            n = sum(len(r.get("dropped_closer", "")) for rs in runs.values() for r in rs)
            dropped = {f: sum(r.get("dropped_closer", "").count("1") for r in rs) for f, rs in runs.items()}
            where = [f"`{f}` {k}" for f, k in dropped.items() if k]
            flagged = [r for rs in runs.values() for r in rs if r.get("dropped_closer", "").count("1")]
            known = [r for r in flagged if "cut_at_limit" in r]
            if known:
                cut = sum(r["cut_at_limit"].count("1") for r in known)
                skipped = sum(r["dropped_closer"].count("1") for r in known) - cut
                where += [f"{cut} cut at the limit", f"{skipped} skipped"]
            if len(known) < len(flagged):
                where.append(
                    f"{sum(r['dropped_closer'].count('1') for r in flagged if r not in known)} cause not recorded"
                )
                unknown_cause = True
            row.append(f"{sum(dropped.values())} of {n}" + (f" ({', '.join(where)})" if where else "") if n else "")
        if any(row):
            rows.append(f"| {budget} | " + " | ".join(row) + " |")
    if not rows:
        return []
    limit = f"{max_new_tokens} new tokens" if max_new_tokens else "its token limit"
    note = ' Runs finished before the study recorded the cause count as "cause not recorded".' if unknown_cause else ""
    return ["", "**Dropped closer**: held-out completions that never close the trace, every seed and family so far; "
            f"\"cut at the limit\": of those, the ones the generation limit ({limit}) ended inside the trace, which ran "
            f"out of room; \"skipped\": the ones that stopped or answered without closing the trace.{note}", "",
            "| budget | " + " | ".join(labels[a] for a in arms) + " |", "|---|" + "---|" * len(arms), *rows]  # fmt: skip


def _wall(run: dict[str, Any]) -> float:
    """A run's training wall time: SFT, plus GRPO where it has a GRPO stage."""
    return run["sft_time_s"] + (run.get("grpo_time_s") or 0.0)


def _diagnostics(cells: dict, family: str, budget: int, labels: dict[str, str]) -> list[str]:
    """The table of :data:`METRICS` per arm at ``budget`` (mean over seeds; n/a where a family does not define it)."""
    formats = {"trace_accuracy": _pct, "answer_trace_agreement": _pct, "think_ce": "{:.3f}".format,
               "answer_ce": "{:.3f}".format}  # fmt: skip
    arms = [a for a in ARMS if cells.get((family, budget, a))]
    keys = [k for k in METRICS if k != "grpo_time_s" or any(ARMS[a].grpo_after for a in arms)]
    lines = ["| arm | " + " | ".join(METRICS[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for arm in arms:
        seeds = cells[family, budget, arm]
        row = []
        for key in keys:
            values = [r.get(key) for r in seeds.values()]
            known = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            row.append(formats.get(key, "{:.1f}".format)(statistics.fmean(known)) if known else "n/a")
        lines.append(f"| {labels[arm]} | " + " | ".join(row) + " |")
    return lines


#: a run "follows its trace" when its answer agrees with its own trace on at least this share of the questions
FOLLOWS_TRACE = 0.5


def _follows_trace_lines(cells: dict, family: str, budget: int, labels: dict[str, str]) -> list[str]:
    """Per arm at ``budget``, in how many seeds the answers follow the run's own trace (``answer_trace_agreement`` at
    least :data:`FOLLOWS_TRACE`); and, paired by seed, SCALe-SFT (defaults) against vanilla SFT. Where a run either
    learns to map its trace to the answer or does not, the mean over seeds hides two outcomes; this says how often
    each arm got there. Nothing where the family defines no trace agreement."""

    def follows(arm: str) -> dict[int, bool]:
        seeds = cells.get((family, budget, arm), {})
        return {s: r["answer_trace_agreement"] >= FOLLOWS_TRACE for s, r in seeds.items()
                if isinstance(r.get("answer_trace_agreement"), (int, float))}  # fmt: skip

    parts = [f"{labels[a]} {sum(f.values())} of {len(f)}" for a in ARMS if (f := follows(a))]
    if not parts:
        return []
    lines = ["", f"Seeds whose answers follow their own trace (answer = trace on at least {_pct(FOLLOWS_TRACE)} of the "
             f"questions) at {budget} steps: " + ", ".join(parts) + "."]  # fmt: skip
    ours, theirs = follows("scale_sft"), follows("sft")
    both = sorted(set(ours) & set(theirs))
    if both:
        count = {
            (a, b): sum(ours[s] is a and theirs[s] is b for s in both) for a in (True, False) for b in (True, False)
        }
        lines[-1] += (f" Paired by seed, {labels['scale_sft']} and vanilla SFT: both {count[True, True]}, SCALe only "
                      f"{count[True, False]}, vanilla only {count[False, True]}, neither {count[False, False]} (of "
                      f"{len(both)}).")  # fmt: skip
    return lines


def report(data: dict[str, Any], image: str | None = None) -> dict[str, Any]:
    """Tables and sentences of the study from its results file (``data``: the loaded JSON); ``image``: the plot's
    path in the markdown (default: docs/results.md's ``img/results_<model>_curve.png``)."""
    runs = data.get("runs", [])
    design = data.get("design")
    if design is None or not runs:
        return {"markdown": "No run has finished yet.\n", "summary": "No run has finished yet.", "pairs": []}
    cells = _cells(runs, design)
    families = [f for f in design["families"] if any(k[0] == f for k in cells)] or sorted({r["family"] for r in runs})
    budgets = list(design["budgets"])
    lines: list[str] = []
    all_pairs: list[dict[str, Any]] = []
    design_obj = design_from_dict(design)
    labels = arm_labels(design_obj)
    n_total = len(plan(design_obj, runs=runs))
    lines.append(
        f"{len(runs)} of {n_total} planned runs finished "
        f"(model {runs[0]['model']}; devices: {', '.join(sorted({r['device'] + ' ' + r['precision'] for r in runs}))}"
        f"{_processor_text(runs)})."
    )
    lines.append("")
    if design_obj.closer != DEFAULT_CLOSE:
        lines += [
            f"**Closing tag**: the SCALe arms without a closing-tag setting of their own ran with "
            f"`think_close_segment: {design_obj.closer}`, the default when this design was fixed; the default is now "
            f"`{DEFAULT_CLOSE}` (rule 7, docs/concepts.md).",
            "",
        ]
    if len(design["lr_grid"]) == 1:
        lines.append(f"**Learning rate**: {design['lr_grid'][0]:g} for every arm and budget (one rate: no tuning).")
    else:
        lines.append(
            "**Learning rate per budget** (vanilla SFT alone, seed 0, dev accuracy; ties to the smaller rate):"
        )
        lines.append("")
        lines.append("| family | budget | " + " | ".join(f"lr {lr:g}" for lr in design["lr_grid"]) + " | chosen |")
        lines.append("|---|---|" + "---|" * (len(design["lr_grid"]) + 1))
    for family in families:
        for budget in budgets:
            tried = {r["lr"]: r for r in _lr_tuning(runs, family, budget)}
            if not tried:
                continue
            row = [f"{_pct(tried[lr]['dev_accuracy'])}" if lr in tried else "pending" for lr in design["lr_grid"]]
            lr = chosen_lr(runs, family, budget, tuple(design["lr_grid"]))
            lines.append(f"| `{family}` | {budget} | " + " | ".join(row) + f" | {lr:g} |" if lr else
                         f"| `{family}` | {budget} | " + " | ".join(row) + " | pending |")  # fmt: skip
    lines += _grpo_lines(runs, design, families)
    for family in families:
        lines += ["", f"#### `{family}` ({REGIMES.get(family, family)}): held-out accuracy by SFT budget", ""]
        lines += [_ACCURACY_CELLS, ""]
        lines.append("| arm | " + " | ".join(f"{b} steps" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for arm in ARMS:
            row = []
            for budget in budgets:
                seeds = cells.get((family, budget, arm), {})
                if not seeds:
                    row.append("")
                    continue
                mal = statistics.fmean(r["malformed_rate"] for r in seeds.values())
                drop = statistics.fmean(r["dropped_closer_rate"] for r in seeds.values())
                row.append(f"{_accuracy_cell([seeds[s]['accuracy'] for s in sorted(seeds)])}; malformed {_pct(mal)}, "
                           f"no closer {_pct(drop)})")  # fmt: skip
            if any(row):
                lines.append(f"| {labels[arm]} | " + " | ".join(row) + " |")
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
                    f"| {labels[arm]} − {labels[base]} | {budget} | {_interval(p['interval'])} | "
                    f"{p['sign_flip_p']:.2g} | {per} |"
                )
        lines += _precision_lines(cells, design_obj, runs, family)
        target = design["target_accuracy"]
        reach = []
        for arm in ARMS:
            hit = None
            for budget in budgets:
                seeds = cells.get((family, budget, arm), {})
                if seeds and statistics.fmean(r["accuracy"] for r in seeds.values()) >= target:
                    hit = (budget, statistics.fmean(_wall(r) for r in seeds.values()))
                    break
            if any(k[0] == family and k[2] == arm for k in cells):
                reach.append(f"{labels[arm]}: " + (f"{hit[0]} steps ({hit[1]:.0f} s)" if hit else "not reached"))
        lines += ["", f"First budget at which the mean accuracy reaches {_pct(target)}: " + "; ".join(reach) + "."]
        lines += _time_ratio_lines(cells, family, budgets)
        lines += _sft_time_lines(cells, family, budgets, labels)
        with_data = [b for b in budgets if any(k[0] == family and k[1] == b for k in cells)]
        if with_data:
            at = design["claim_budget"] if design["claim_budget"] in with_data else max(with_data)
            lines += ["", f"Diagnostics at {at} steps (mean over seeds):", "", *_diagnostics(cells, family, at, labels)]
            lines += _follows_trace_lines(cells, family, at, labels)
    # rule 6 (seed 0, every budget) belongs to the designs without the own-segment arm; rule 7 replaces it there
    choice = closing_tag_choice(runs) if "scale_own" not in design["arms"] else None
    every = len(design["families"]) * len(budgets)  # the rule's cells: every family and budget
    if choice is not None:
        lines += [
            "",
            f"**Closing-tag default** (dev split, seed 0, {len(choice['cells'])} family x budget cells): "
            f"`think`: {choice['think']['dev_malformed']} malformed, {choice['think']['dev_correct']} correct; "
            f"`answer`: {choice['answer']['dev_malformed']} malformed, {choice['answer']['dev_correct']} correct "
            f"-> `{choice['chosen']}`"
            + (
                f" (provisional: {len(choice['cells'])} of {every} cells so far)."
                if len(choice["cells"]) < every
                else "."
            )
            + (
                f" Rule 7 (the closing-tag study, docs/concepts.md) replaced this rule: the default is `{DEFAULT_CLOSE}`."
                if choice["chosen"] != DEFAULT_CLOSE
                else ""
            ),
        ]
    default = closing_tag_default(runs, design["claim_budget"]) if "scale_own" in design["arms"] else None
    if default is not None:
        seeds = len(design["seeds"]) if design.get("seeds") is not None else design["claim_seeds"]
        done, every_cell = len(default["cells"]), seeds * len(design["families"])
        counts = "; ".join(
            f"`{k}`: {default[k]['dev_skipped']} skipped of {default[k]['dev_n']}, {default[k]['dev_correct']} correct"
            for k in SETTING_ARMS
        )
        lines += [
            "",
            f"**Closing-tag default** (rule 7: dev split, {design['claim_budget']} steps, {done} seed x family cells "
            f"with every setting; completions that skip the closer, then correct answers): {counts} -> "
            f"`{default['chosen']}`"
            + (f" (provisional: {done} of {every_cell} cells so far)." if done < every_cell else "."),
        ]
    lines += _dropped_closer_lines(cells, families, budgets, design.get("max_new_tokens"), labels)
    summary = summarize(all_pairs, design, {f: claim_seed_count(design_obj, runs, f) for f in families})
    lines += ["", "**What the data say:** " + summary]
    if cells:  # write_docs draws it from the same file
        key = results_key(design.get("name", "powered"), design.get("model", "smollm2"))
        image = image or f"img/results_{key}_curve.png"
        lines += ["", f"![accuracy vs SFT budget and wall time]({image})"]
    return {"markdown": "\n".join(lines) + "\n", "summary": summary, "pairs": all_pairs, "closing_tag": choice}


def _processor_text(runs: list[dict[str, Any]]) -> str:
    """``; processors: A (n runs), B (m runs), not recorded (k runs)`` where some run records its processor (runs
    before that field existed count as not recorded), else nothing."""
    if not any(r.get("processor") for r in runs):
        return ""
    counts: dict[str, int] = {}
    for r in runs:
        name = r.get("processor") or "not recorded"
        counts[name] = counts.get(name, 0) + 1
    order = sorted(counts, key=lambda name: (name == "not recorded", -counts[name], name))
    return "; processors: " + ", ".join(f"{name} ({counts[name]} run{'s' * (counts[name] != 1)})" for name in order)


def _precision_lines(cells: dict, design: Design, runs: list[dict[str, Any]], family: str) -> list[str]:
    """Per budget the precision rule watches (:func:`watched_budgets`), one paragraph: per paired difference its
    interval's half-width against ``target_half_width``, the seeds its spread would need, and how many seeds the rule
    runs there now."""
    lines = []
    for budget in sorted(watched_budgets(design)):
        lines += _budget_precision(cells, design, runs, family, budget)
    return lines


def _budget_precision(cells: dict, design: Design, runs: list[dict[str, Any]], family: str, budget: int) -> list[str]:
    parts = []
    watched, labels = precision_pairs(design), arm_labels(design)
    for arm, base in claim_pairs(design):
        p = paired(cells, family, budget, arm, base)
        if p is None or p["interval"]["n"] < 2:
            continue
        half = p["interval"]["half_width"]
        if half <= design.target_half_width:
            state = "met"
        else:
            sd = statistics.stdev(s["diff"] for s in p["per_seed"])
            need = seeds_for_width(sd, design.target_half_width)
            state = f"not met: its spread (sd {100 * sd:.1f} points) needs " + (
                f"about {need} seeds" if need else "more than 200 seeds"
            )
            if (arm, base) not in watched:
                state += "; the precision rule adds no seeds to this pair"
        parts.append(f"{labels[arm]} − {labels[base]} ±{100 * half:.1f} with {p['interval']['n']} seeds "
                     f"({state})")  # fmt: skip
    if not parts:
        return []
    rule = ""
    first = _first_seeds(design, budget)
    if design.seeds is None and design.max_claim_seeds > first:
        arms = ", ".join(labels[a] for a in design.arms if a in design.precision_arms)
        rule = (f" The precision rule runs {claim_seed_count(design, runs, family, budget)} seeds here so far (from "
                f"{first}, at most {design.max_claim_seeds}" + (f"; arms {arms}" if arms else "") + ").")  # fmt: skip
    which = "each 95% interval"
    if watched != claim_pairs(design):
        which = "the 95% interval of " + " and ".join(f"{labels[a]} − {labels[b]}" for a, b in watched)
    return [
        "",
        f"Precision at {budget} steps (the claim needs {which} within "
        f"±{100 * design.target_half_width:g} points): " + "; ".join(parts) + "." + rule,
    ]


def _grpo_lines(runs: list[dict[str, Any]], design: dict[str, Any], families: list[str]) -> list[str]:
    """The table of the vanilla-only GRPO setting choice (:func:`chosen_grpo`), where the design has one."""
    if not grpo_is_tuned(design):
        return []
    grid = tuple(tuple(g) for g in design["grpo_grid"])
    head = " | ".join(f"rate {g[0]:g}, {g[1]} gen. x {g[2]} prompts" for g in grid)
    lines = ["", f"**GRPO setting** (vanilla SFT + GRPO alone, seed 0, {design['claim_budget']} SFT steps, "
             f"{design['grpo_steps']} GRPO steps, dev accuracy; ties to the cheaper, then the smaller rate):", "",
             f"| family | {head} | chosen |", "|---|" + "---|" * (len(grid) + 1)]  # fmt: skip
    for family in families:
        tried = {r.get("grpo_setting"): r for r in runs if r.get("tuning") and r["arm"] == "sft_grpo"
                 and r["family"] == family}  # fmt: skip
        if not tried:
            continue
        row = [_pct(tried[i]["dev_accuracy"]) if i in tried else "pending" for i in range(len(grid))]
        chosen = chosen_grpo(runs, family, design["claim_budget"], grid)
        lines.append(f"| `{family}` | " + " | ".join(row) + f" | {'pending' if chosen is None else chosen + 1} |")
    return lines


def _time_ratio_lines(cells: dict, family: str, budgets: list[int]) -> list[str]:
    """Per budget with both: the wall time of vanilla SFT + GRPO against SCALe-SFT's (the paper's time claim), and
    the GRPO stage against its own SFT stage."""
    out = []
    for budget in budgets:
        grpo, scale = cells.get((family, budget, "sft_grpo"), {}), cells.get((family, budget, "scale_sft"), {})
        if not grpo or not scale:
            continue
        total = statistics.fmean(_wall(r) for r in grpo.values())
        sft_stage = statistics.fmean(r["sft_time_s"] for r in grpo.values())
        ours = statistics.fmean(r["sft_time_s"] for r in scale.values())
        out.append(
            f"Wall time at {budget} steps: vanilla SFT + GRPO {total:.0f} s = {total / ours:.1f}x SCALe-SFT's "
            f"{ours:.0f} s (its GRPO stage {(total - sft_stage) / max(sft_stage, 1e-9):.1f}x its SFT stage)."
        )
    return ["", *out] if out else []


#: the further arms a regime's sentence names, after SCALe-SFT − vanilla SFT: (arm, baseline, words)
_ALSO = (("scale_close", "sft", "with the closer as answer"), ("scale_own", "sft", "with the closer as its own segment"),
         ("scale_think", "sft", "with the closer as think"),
         ("scale_const", "sft_const", "with a constant learning rate for both arms"),
         ("scale_token", "sft", "with token normalization"), ("scale_sft_grpo", "sft_grpo", "after GRPO"),
         ("scale_sft", "sft_grpo", "against vanilla SFT + GRPO"))  # fmt: skip


def summarize(pairs: list[dict[str, Any]], design: dict[str, Any], seeds: dict[str, int] | None = None) -> str:
    """One sentence per regime for SCALe-SFT − vanilla SFT at the claim budget (or the largest with data), and the
    other SCALe arms at that budget (:data:`_ALSO`), with how many of its seeds have run; ``seeds``: per family, the
    seeds the claim budget has under the precision rule (default ``claim_seeds``). SCALe-SFT is ``scale_sft`` or, in a
    design without it, its first SCALe-SFT arm; named by its closing tag where that is not the package default."""
    target = design.get("target_half_width", _DEFAULTS["target_half_width"])
    closer = design.get("closer", _DEFAULTS["closer"])
    scale_arms = [a for a in design["arms"] if ARMS[a].trainer == "scale_sft" and ARMS[a].grpo_after is None]
    lead = "scale_sft" if "scale_sft" in design["arms"] or not scale_arms else scale_arms[0]
    setting = arm_closer(lead, closer)
    main = "SCALe-SFT" if setting == DEFAULT_CLOSE else f"SCALe-SFT with the closer as {setting}"
    parts = []
    for family in design["families"]:
        mine = [p for p in pairs if p["family"] == family and p["arm"] == lead and p["base"] == "sft"]
        if not mine:
            continue
        at = [p for p in mine if p["budget"] == design["claim_budget"]] or mine
        best = max(at, key=lambda p: (p["interval"]["n"], p["budget"]))
        text = f"`{family}` ({REGIMES.get(family, family)}), {best['budget']} steps: {main} is {_verdict(best)}"
        for arm, base, words in _ALSO:
            if arm == lead and base == "sft":
                continue
            if closer != DEFAULT_CLOSE and arm_closer(arm) == DEFAULT_CLOSE:
                words += " (the default)"
            also = [p for p in pairs if p["family"] == family and p["arm"] == arm and p["base"] == base
                    and p["budget"] == best["budget"]]  # fmt: skip
            if also:
                text += f"; {words} {_verdict(also[0])}"
        claim = best["budget"] == design["claim_budget"]
        if design.get("seeds") is not None:
            planned = len(design["seeds"])
        else:
            planned = (seeds or {}).get(family, design["claim_seeds"]) if claim else design["curve_seeds"]
        progress = []
        if best["interval"]["n"] < planned:
            progress.append(f"{best['interval']['n']} of {planned} seeds at {best['budget']} steps")
        if not claim:
            progress.append(f"none yet at {design['claim_budget']}, the budget the claim rests on")
        if progress:
            text += f" (study in progress: {'; '.join(progress)})"
        elif best["interval"]["half_width"] > target:
            text += f" (its interval is wider than the ±{100 * target:g} points the claim needs)"
        parts.append(text)
    return ". ".join(parts) + "." if parts else "No paired comparison has finished yet."


def plot_points(cells: dict, family: str, arm: str, budgets: list[int]) -> list[dict[str, float]]:
    """One arm's points of the curve: per budget with runs, the mean accuracy over seeds (%), the mean wall time, and
    how far its 95% t interval reaches below and above the mean, clipped to 0-100% as in the tables (0 for one seed:
    it has no interval)."""
    out = []
    for budget in budgets:
        seeds = cells.get((family, budget, arm), {})
        if not seeds:
            continue
        ci = stats.t_interval([r["accuracy"] for r in seeds.values()])
        mean = 100 * ci["mean"]
        low, high = (mean, mean) if ci["n"] < 2 else (max(0.0, 100 * ci["low"]), min(100.0, 100 * ci["high"]))
        out.append({"budget": budget, "wall_s": statistics.fmean(_wall(r) for r in seeds.values()), "mean": mean,
                    "below": mean - low, "above": high - mean})  # fmt: skip
    return out


def plot(data: dict[str, Any], path: Path) -> bool:
    """Accuracy against SFT budget and against training wall time (SFT, + GRPO for a GRPO arm), per family (mean
    over seeds, 95% t interval)."""
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
    labels = arm_labels(design_from_dict(design))
    for col, family in enumerate(families):
        drawn = 0
        for arm in ARMS:
            pts = plot_points(cells, family, arm, design["budgets"])
            if not pts:
                continue
            # arms that share a budget sit side by side on the steps axis (0.6 steps apart), not on top of each other
            shift = 0.6 * drawn
            drawn += 1
            yerr = [[p["below"] for p in pts], [p["above"] for p in pts]]
            for row, x in ((0, [p["budget"] + shift for p in pts]), (1, [p["wall_s"] for p in pts])):
                axes[row][col].errorbar(x, [p["mean"] for p in pts], yerr=yerr, marker="o", capsize=3,
                                        color=COLOURS[arm], label=labels[arm])  # fmt: skip
        axes[0][col].set_xlabel("SFT optimizer steps")
        grpo = any(k[0] == family and ARMS[k[2]].grpo_after for k in cells)
        axes[1][col].set_xlabel("SFT + GRPO wall time (s)" if grpo else "SFT wall time (s)")
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_ylabel("held-out accuracy (%)")
            ax.set_ylim(-2, 102)
            ax.set_title(f"{family} ({REGIMES.get(family, family)})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.text(
        0.5,
        0.005,
        "mean over seeds; bars: 95% t interval over seeds, clipped to 0-100% (none for one seed)",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_training(data: dict[str, Any], path: Path) -> bool:
    """SFT losses and SCALe's segment losses and weights over the steps of each family's claim budget (mean over
    seeds), from the runs' logs; ``False`` where no run has one (runs recorded before logs were kept)."""
    from .common import pyplot

    plt = pyplot()
    runs, design = data.get("runs", []), data.get("design")
    if plt is None or design is None:
        return False
    cells = _cells(runs, design)
    families = [f for f in design["families"] if any(k[0] == f and r.get("log_history") for k, v in cells.items()
                                                      for r in v.values())]  # fmt: skip
    if not families:
        return False
    fig, axes = plt.subplots(1, len(families), figsize=(6.2 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        budget = max(b for f, b, _ in cells if f == family)
        for arm, key, colour, label in (
            ("sft", "loss", "tab:blue", "vanilla SFT loss (token mean)"),
            ("scale_sft", "loss", "black", "SCALe loss (weighted)"),
            ("scale_sft", "scale/think_loss", "tab:green", "SCALe think loss"),
            ("scale_sft", "scale/answer_loss", "tab:red", "SCALe answer loss"),
            ("scale_sft", "scale/answer_weight", "tab:orange", "SCALe answer weight"),
        ):
            per_step: dict[float, list[float]] = {}
            for r in cells.get((family, budget, arm), {}).values():
                for row in r.get("log_history") or []:
                    if key in row:
                        per_step.setdefault(row["step"], []).append(float(row[key]))
            if per_step:
                steps = sorted(per_step)
                ax.plot(steps, [statistics.fmean(per_step[s]) for s in steps], color=colour, label=label,
                        linestyle="--" if "weight" in key else "-")  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{family}: SFT at {budget} steps (mean over seeds)")
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


def write_docs(result: dict[str, Any], key: str, root: Path = Path(".")) -> None:
    """docs/results.md's generated section and README's summary line of the study ``key`` (:func:`results_key`),
    from :func:`report`, and its plot."""
    results_md = root / "docs" / "results.md"
    results_md.write_text(replace_block(results_md.read_text(), key, result["markdown"]))
    readme = root / "README.md"
    readme.write_text(replace_block(readme.read_text(), key, result["summary"]))
    plot(load(root / "docs" / "results" / f"{key}.json"), root / "docs" / "img" / f"results_{key}_curve.png")
