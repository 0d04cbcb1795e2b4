"""``scale-plugins study``: the powered SFT comparison (vanilla vs SCALe, budgets as a curve, paired statistics),
resumable, one results file per model; docs/results.md (part 1) is generated from that file."""

from __future__ import annotations

import argparse
import os

from .paper import study


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--design",
        choices=sorted(study.DESIGNS),
        default="powered",
        help="powered: the study of docs/results.md (2 families, budgets 24/48/96 steps, 8 seeds at 96, 200 held-out "
        "questions per family); smoke: the same pipeline in a few minutes (tests)",
    )
    p.add_argument("--model", choices=sorted(study.MODEL_NAMES), default="smollm2")
    p.add_argument(
        "--results",
        default=None,
        help="the results file (JSON) to resume and append to (default: docs/results/<model>.json)",
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
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (then report)")
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
    if ns.model != design.model:
        raise SystemExit(f"--design {ns.design} is a {design.model} design")
    if ns.report:
        from pathlib import Path

        path = Path(ns.results or study.default_results_path(design))
        result = study.report(study.load(path))
        if ns.update_docs:
            study.write_docs(result, design.model)
        print(result["markdown"])
        return 0
    study.run(
        design_name=ns.design,
        results=ns.results,
        families=ns.family,
        arms=ns.arms,
        threads=ns.threads or max(1, min(2, os.cpu_count() or 1)),
        max_runs=ns.max_runs,
        update_docs=ns.update_docs,
    )
    return 0
