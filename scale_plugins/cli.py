"""``scale-plugins``: inspect, schedule, demo, bench, trl-sft.

Frameworks are imported inside the subcommands only, so ``scale-plugins schedule``
works in any environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .core import ScaleOptions, option_fields
from .core.options import options_markdown


def _add_scale_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SCALe options (see docs/options.md)")
    for opt in option_fields():
        flag = "--" + opt.name.replace("_", "-")
        if opt.name == "extra_segments":
            group.add_argument(flag, nargs="*", default=[], metavar="NAME:<OPEN>:</CLOSE>:W0:W1", help=opt.help)
        else:
            group.add_argument(flag, type=opt.type, default=opt.default, choices=opt.choices, help=opt.help)


def _options_from(args: argparse.Namespace) -> ScaleOptions:
    return ScaleOptions(**{o.name: getattr(args, o.name) for o in option_fields()})


# -- schedule -------------------------------------------------------------------------------------------------


def cmd_schedule(args: argparse.Namespace) -> int:
    from .core import segment_weights

    options = _options_from(args)
    names = options.segment_names
    rows = sorted({round(i * args.max_steps / (args.rows - 1)) for i in range(args.rows)})
    print(f"{'step':>8} {'progress':>9} " + " ".join(f"{n + '_weight':>16}" for n in names))
    for step in rows:
        ws = segment_weights(step, args.max_steps, options)
        print(f"{step:>8} {step / args.max_steps:>9.3f} " + " ".join(f"{w:>16.4f}" for w in ws))
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
            return 0
        steps = list(range(args.max_steps + 1))
        curves = list(zip(*(segment_weights(s, args.max_steps, options) for s in steps)))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, curve in zip(names, curves):
            ax.plot(steps, curve, label=f"{name} weight")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("weight")
        ax.set_title(f"SCALe {options.schedule} schedule")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    return 0


# -- inspect --------------------------------------------------------------------------------------------------

COLOURS = {0: "\033[2m", 1: "\033[33m", 2: "\033[32m"}
EXTRA_COLOURS = ["\033[35m", "\033[36m", "\033[34m"]
RESET = "\033[0m"


def _load_tokenizer(name: str) -> Any:
    if name in ("builtin:qwen3", "builtin:qwen2.5"):
        from .hf.tiny import qwen_tokenizer

        return qwen_tokenizer(qwen3_specials=name == "builtin:qwen3")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def encode_sample(tokenizer: Any, sample: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as an SFT trainer builds them: completion / last assistant turn supervised."""
    if "messages" in sample or "conversations" in sample:
        messages = sample.get("messages") or sample["conversations"]
        messages = [
            {"role": m.get("role", m.get("from")), "content": m.get("content", m.get("value"))} for m in messages
        ]
        last = max(i for i, m in enumerate(messages) if m["role"] in ("assistant", "gpt"))
        prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: last + 1], tokenize=False)
    elif "prompt" in sample and "completion" in sample:
        prompt, full = sample["prompt"], sample["prompt"] + sample["completion"]
    elif "text" in sample:
        prompt, full = "", sample["text"]
    else:
        raise ValueError(
            f"unknown sample format with keys {sorted(sample)}: expected messages, prompt/completion or text"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:  # the template re-tokenized across the boundary: mask the common prefix
        common = next((i for i, (a, b) in enumerate(zip(ids, prompt_ids)) if a != b), min(len(ids), len(prompt_ids)))
        prompt_ids = ids[:common]
    return ids, [-100] * len(prompt_ids) + ids[len(prompt_ids) :]


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from .core import SegmentTagger

    options = _options_from(args)
    tokenizer = _load_tokenizer(args.tokenizer)
    tagger = SegmentTagger.from_tokenizer(tokenizer, options)
    colour = sys.stdout.isatty() and not args.plain
    names = ("ignored", *options.segment_names)
    totals = [0] * len(names)
    samples = _read_jsonl(args.data)[: args.num_samples]
    for index, sample in enumerate(samples):
        ids, labels = encode_sample(tokenizer, sample)
        segments = tagger.tag(torch.tensor([labels]), shift=False).segment_ids[0].tolist()
        counts = [segments.count(k) for k in range(len(names))]
        totals = [a + b for a, b in zip(totals, counts)]
        print(f"--- sample {index}: " + ", ".join(f"{n}={c}" for n, c in zip(names, counts)))
        pieces = tagger.table.pieces
        out, current, run = [], None, []
        for token, seg in zip(ids, segments):
            if seg != current and run:
                out.append((current, b"".join(run).decode("utf-8", "replace")))
                run = []
            current = seg
            run.append(pieces[token] if token < len(pieces) else b"")
        if run:
            out.append((current, b"".join(run).decode("utf-8", "replace")))
        for seg, text in out:
            if colour:
                code = COLOURS.get(seg, EXTRA_COLOURS[(seg - 3) % len(EXTRA_COLOURS)])
                sys.stdout.write(code + text + RESET)
            else:
                sys.stdout.write(f"[{names[seg]}]{text}[/{names[seg]}]")
        sys.stdout.write("\n")
    print(f"=== totals over {len(samples)} samples: " + ", ".join(f"{n}={c}" for n, c in zip(names, totals)))
    if samples and totals[1] == 0:
        print(
            f"WARNING: no {options.think_open!r}...{options.think_close!r} found in any supervised token. "
            "Check --think-open/--think-close against your chat template.",
            file=sys.stderr,
        )
        return 2
    return 0


# -- demo -----------------------------------------------------------------------------------------------------


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


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_bench_paper(args: argparse.Namespace) -> int:
    from .paper_bench import main as bench_paper_main

    return bench_paper_main(args)


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

    p = sub.add_parser("inspect", help="show how a tokenizer segments dataset samples")
    p.add_argument("--tokenizer", required=True, help="a local tokenizer directory, or builtin:qwen3 / builtin:qwen2.5")
    p.add_argument("--data", required=True, help="JSONL: messages / conversations, prompt + completion, or text")
    p.add_argument("--num-samples", type=int, default=3)
    p.add_argument("--plain", action="store_true", help="no colours, [think]...[/think] markers")
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
        help="the paper's comparison at toy scale: vanilla SFT / SCALe-SFT, each +/- GRPO, on CPU (docs/results.md)",
    )
    from .paper_bench import add_arguments as add_paper_arguments

    add_paper_arguments(p)
    p.set_defaults(func=cmd_bench_paper)

    p = sub.add_parser(
        "trl-sft", help="`trl sft` with ScaleSFTTrainer: scale-plugins trl-sft --config recipe.yaml", add_help=False
    )
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "trl-sft":
        from .trl.cli import main as trl_main

        return trl_main(argv[1:])
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
