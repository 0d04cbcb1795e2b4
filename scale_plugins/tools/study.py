"""``scale-plugins study``: the powered SFT comparison (vanilla vs SCALe, budgets as a curve, paired statistics),
resumable, one results file per model; docs/results.md (part 1) is generated from that file. A front of the one
study runner (:mod:`.paper.study`), like ``bench-paper``."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from .paper import study
from .paper.common import PRECISION_ENV
from .paper.models import MODELS

_P = study.DESIGNS["powered"]


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--design",
        choices=sorted(study.DESIGNS),
        default="powered",
        help=f"powered: the study of docs/results.md (2 families, budgets 24/48/96 steps, {_P.claim_seeds} seeds at "
        f"{_P.claim_budget}, up to {_P.max_claim_seeds} while an interval is wider than +-10 points, {_P.n_eval} held-out "
        "questions per family); gemma3: the same on Gemma 3 270M at 96 steps, 3 seeds; headline: SCALe-SFT vs SFT + "
        "GRPO (mc, 96 steps, 3 seeds, the GRPO setting chosen on vanilla alone); smoke: the same pipeline in a few "
        "minutes (tests); short / scratch: the designs of docs/results.md parts 2 and 3 (bench-paper's)",
    )
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=None,
        help="run the design on this model (an entry of scale_plugins/tools/paper/models.py; default: the design's), "
        "into its own results file",
    )
    p.add_argument(
        "--results",
        default=None,
        help="the results file (JSON) to resume and append to (default: docs/results/<model>.json for powered and a "
        "model's own design, docs/results/<model>_<design>.json for the others)",
    )
    p.add_argument(
        "--family", nargs="+", default=None, help="a subset of the design's families (side-by-side processes)"
    )
    p.add_argument("--arms", nargs="+", choices=list(study.ARMS), default=None, help="a subset of the arms")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the CPUs, at most 2; give a study 1 while you work beside it)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="how many worker processes train side by side, each taking the next run no other holds (families and "
        "seeds alike), appending to the same results file; a second study command on the same file joins in the "
        "same way",
    )
    p.add_argument(
        "--max-runs",
        type=_count,
        default=None,
        help="train at most this many new runs, the --jobs worker processes together, then report (0: the time "
        "estimate and the report only)",
    )
    p.add_argument(
        "--reuse",
        default=None,
        metavar="FILE",
        help="first copy into the results file the runs of FILE (another study's results) that this design plans: "
        "FILE's design must have the same fingerprint (model, data sizes, rate grid, batch, LoRA rank, generation "
        "limit) and its runs the same device and precision; each copied run names FILE's design in `reused_from`",
    )
    p.add_argument(
        "--completions",
        default=None,
        metavar="DIR",
        help="also write every held-out completion of the runs this command trains (or rechecks), one JSONL per run "
        "(question, gold solution, completion) in DIR, so its scores can be read and recomputed",
    )
    p.add_argument(
        "--recheck",
        nargs="+",
        default=None,
        metavar="KEY",
        help="run these finished runs of the results file again (keys as stored, e.g. arith/24/sft/seed1/lr0.0015) "
        "and, where a rerun reproduces every per-question result, add the fields the stored run lacks (e.g. "
        "cut_at_limit, recorded since); a run that does not reproduce is named and left as it is (exit status 1)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="train and generate in this precision (auto: bf16 where it is fast here, a GPU or a CPU with native bf16, "
        "else fp32). A results file holds one precision: to resume a file on a machine whose auto choice differs, "
        "give the file's (its runs' `precision`)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="run nothing: print the report of the results file and, with --update-docs, rewrite the docs from it",
    )
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite docs/results.md's generated section, README's summary line and the curve plot (in a clone)",
    )


def main(ns: argparse.Namespace) -> int:
    design = study.DESIGNS[ns.design]
    if ns.model is not None:
        design = dataclasses.replace(design, model=ns.model)
    if ns.report:
        path = Path(ns.results or study.default_results_path(design, ns.design))
        result = study.report(study.load(path))
        if ns.update_docs:
            study.write_docs(result, study.results_key(ns.design, design.model))
        print(result["markdown"])
        return 0
    threads = ns.threads or max(1, min(2, (os.cpu_count() or 1) // max(1, ns.jobs)))
    if ns.precision != "auto":  # an environment variable, so that the worker processes (--jobs) inherit it
        os.environ[PRECISION_ENV] = ns.precision
    if ns.recheck:
        failed = study.recheck(ns.recheck, design_name=ns.design, results=ns.results, threads=threads, design=design,
                               completions_dir=ns.completions)  # fmt: skip
        return 1 if failed else 0
    if ns.reuse:
        copied = study.reuse_runs(ns.reuse, ns.design, design, ns.results)
        print(f"reused {copied} runs of {ns.reuse}", flush=True)
    study.run(
        design_name=ns.design,
        results=ns.results,
        families=ns.family,
        arms=ns.arms,
        threads=threads,
        max_runs=ns.max_runs,
        update_docs=ns.update_docs,
        design=design,
        jobs=ns.jobs,
        completions_dir=ns.completions,
    )
    return 0
