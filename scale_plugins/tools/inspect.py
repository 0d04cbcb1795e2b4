"""``scale-plugins inspect``: the tokens, masks and think/answer segments TRL's SFTTrainer trains on, per sample.

A tool module: the command line (:mod:`scale_plugins.tools.cli`) and the benchmarks import it; it imports none of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .args import options_from

# -- inspect --------------------------------------------------------------------------------------------------

COLOURS = {0: "\033[2m", 1: "\033[33m", 2: "\033[32m"}
EXTRA_COLOURS = ["\033[35m", "\033[36m", "\033[34m"]
RESET = "\033[0m"


def _load_tokenizer(name: str) -> Any:
    if name in ("builtin:qwen3", "builtin:qwen2.5"):
        from ..hf.offline_tokenizers import qwen_tokenizer

        return qwen_tokenizer(qwen3_specials=name == "builtin:qwen3")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def dataset_format(sample: dict[str, Any], dataset_text_field: str = "text") -> str:
    """The TRL dataset format of ``sample``: ``language modeling``, ``prompt-completion``,
    ``conversational language modeling`` (``messages`` / ShareGPT ``conversations``) or
    ``conversational prompt-completion``. Raises ``ValueError`` for anything SFT cannot train on."""
    if "prompt" in sample and "completion" in sample:
        conversational = _is_messages(sample["prompt"]) or _is_messages(sample["completion"])
        return "conversational prompt-completion" if conversational else "prompt-completion"
    if "messages" in sample or "conversations" in sample:
        return "conversational language modeling"
    if dataset_text_field in sample:
        return "language modeling"
    raise ValueError(
        f"unknown sample format with keys {sorted(sample)}: expected {dataset_text_field!r}, prompt + completion "
        "(strings or lists of messages), messages or conversations"
    )


def _to_chatml(sample: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT keys as TRL renames them (``maybe_convert_to_chatml``): ``conversations`` -> ``messages``, ``from``
    -> ``role``, ``value`` -> ``content``. Role names are kept as they are (``human`` / ``gpt`` stay)."""
    out = dict(sample)
    for key in ("prompt", "completion", "messages", "conversations"):
        if isinstance(out.get(key), list):
            out[key] = [
                {{"from": "role", "value": "content"}.get(k, k): v for k, v in m.items()} if isinstance(m, dict) else m
                for m in out[key]
            ]
    if "conversations" in out:
        out["messages"] = out.pop("conversations")
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_sample(
    tokenizer: Any,
    sample: dict[str, Any],
    *,
    assistant_only_loss: bool | None = None,
    completion_only_loss: bool | None = None,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    dataset_text_field: str = "text",
    chat_template: str | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one sample as TRL's ``SFTTrainer`` builds them (TRL 1.16's dataset preparation,
    reproduced without importing TRL), for every TRL dataset format (:func:`dataset_format`).

    - ``text``: the text + EOS (added if missing), every token supervised;
    - ``prompt`` + ``completion`` strings: the prompt + completion + EOS; with ``completion_only_loss`` (``None``:
      on, TRL's default for this format) the completion and EOS are supervised;
    - ``messages`` / ShareGPT ``conversations`` (keys renamed, role names kept, as TRL does): the chat template over
      the conversation; with ``assistant_only_loss`` the assistant tokens of the template's ``{% generation %}``
      blocks are supervised, otherwise every token;
    - ``prompt`` + ``completion`` messages: the chat template over both; ``completion_only_loss`` masks the tokens
      before the first one the templated prompt (with the generation prompt) and the conversation disagree on;
      ``assistant_only_loss`` additionally keeps only the ``{% generation %}`` tokens.

    The keyword arguments are the ``SFTConfig`` fields of the same names, except ``assistant_only_loss=None``
    (``SFTConfig``'s default is ``False``): ``True`` for ``messages`` data (the assistant turns, what CoT SFT trains),
    ``False`` otherwise. ``chat_template`` overrides the tokenizer's. ``max_length``: truncate as the trainer does
    (the trainer then drops a sample left without a supervised token). ``cmd_inspect`` uses TRL itself when it is
    installed (:func:`encode_as_trainer`).
    """
    kind = dataset_format(sample, dataset_text_field)
    if assistant_only_loss is None:
        assistant_only_loss = "messages" in sample and "prompt" not in sample
    sample = _to_chatml(sample)
    conversational = kind.startswith("conversational")
    if assistant_only_loss and not conversational:
        raise ValueError(f"assistant_only_loss needs conversational data; this sample is {kind}")
    if completion_only_loss is None:
        completion_only_loss = "prompt" in sample and "completion" in sample
    tools = sample.get("tools")
    template_kwargs = {
        "chat_template": chat_template,
        "tools": json.loads(tools) if isinstance(tools, str) else tools,
        **(sample.get("chat_template_kwargs") or {}),
    }

    def chat(messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **template_kwargs, **kwargs)

    eos = tokenizer.eos_token
    masks: list[list[int]] = []
    if "prompt" in sample:
        if conversational:
            prompt_ids = chat(sample["prompt"], add_generation_prompt=True)["input_ids"]
            full = chat(sample["prompt"] + sample["completion"], return_assistant_tokens_mask=assistant_only_loss)
            ids = list(full["input_ids"])
        else:
            completion = sample["completion"] if sample["completion"].endswith(eos) else sample["completion"] + eos
            prompt_ids = tokenizer(text=sample["prompt"])["input_ids"]
            full = tokenizer(text=sample["prompt"] + completion)
            ids = list(full["input_ids"])
        if completion_only_loss:
            start = _common_prefix(prompt_ids, ids)  # where the completion starts (TRL: common_prefix_length)
            masks.append([0] * start + [1] * (len(ids) - start))
    elif conversational:
        full = chat(sample["messages"], return_assistant_tokens_mask=assistant_only_loss)
        ids = list(full["input_ids"])
    else:
        text = sample[dataset_text_field]
        ids = list(tokenizer(text=text if text.endswith(eos) else text + eos)["input_ids"])
    if assistant_only_loss:
        masks.append(list(full["assistant_masks"]))
        if 1 not in masks[-1]:
            raise ValueError(
                "assistant_only_loss: the chat template marks no assistant token; it needs {% generation %} markers"
            )
    labels = [token if all(bits) else -100 for token, *bits in zip(ids, *masks)]
    if max_length is not None:
        cut = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
        ids, labels = ids[cut], labels[cut]
    return ids, labels


def encode_as_trainer(
    tokenizer: Any,
    samples: list[dict[str, Any]],
    *,
    assistant_only_loss: bool = False,
    completion_only_loss: bool | None = None,
    max_length: int | None = 1024,
    truncation_mode: str = "keep_start",
    dataset_text_field: str = "text",
) -> tuple[list[tuple[list[int], list[int]] | None], str]:
    """The (input_ids, labels) of each sample exactly as TRL's ``SFTTrainer`` (and so ``ScaleSFTTrainer``) trains
    it, without packing, and a line saying how they were made. ``None`` for a sample the trainer drops (no
    supervised token left after truncation). The keyword arguments are the ``SFTConfig`` fields (defaults: its).

    With TRL installed this runs TRL's own dataset preparation (``SFTTrainer._prepare_dataset``, the installed
    version) on the samples; without TRL, :func:`encode_sample`, our copy of TRL 1.16's.
    """
    if not samples:
        return [], "no samples"
    kind = dataset_format(samples[0], dataset_text_field)
    if completion_only_loss is None:  # SFTTrainer decides it from the first sample
        completion_only_loss = "prompt" in samples[0] and "completion" in samples[0]
    options = dict(
        assistant_only_loss=assistant_only_loss,
        completion_only_loss=completion_only_loss,
        max_length=max_length,
        truncation_mode=truncation_mode,
        dataset_text_field=dataset_text_field,
    )
    if assistant_only_loss and (not kind.startswith("conversational") or "conversations" in samples[0]):
        # SFTTrainer checks this before it renames ShareGPT `conversations`, so it refuses those too
        raise ValueError(
            "assistant_only_loss: TRL's SFTTrainer supports it for conversational data with `messages` or "
            f"`prompt` / `completion` messages only; the first sample has keys {sorted(samples[0])}"
        )
    try:
        encoded, how = _encode_with_trl(tokenizer, samples, **options)
    except (ImportError, AttributeError) as error:
        why = "TRL is not installed" if isinstance(error, ImportError) else f"this TRL's preparation needs {error}"
        how = f"scale-plugins' copy of TRL 1.16's SFTTrainer tokenization ({why})"
        encoded = []
        for sample in samples:
            ids, labels = encode_sample(tokenizer, sample, **options)
            encoded.append((ids, labels) if any(x != -100 for x in labels) or max_length is None else None)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if kind.startswith("conversational"):
        how += f", chat template of {name}"
    else:
        how += f", tokenizer {name}, EOS {tokenizer.eos_token!r} appended"
    if kind.endswith("prompt-completion"):
        supervised = "the completion" if completion_only_loss else "prompt and completion (completion_only_loss off)"
    else:
        supervised = "every token"
    if assistant_only_loss:
        supervised = "the assistant tokens ({% generation %} blocks of the chat template)" + (
            " of the completion" if kind.endswith("prompt-completion") and completion_only_loss else ""
        )
    truncation = f"max_length {max_length} ({truncation_mode})" if max_length is not None else "no truncation"
    return encoded, f"format: {kind}, {how}; supervised: {supervised}; {truncation}"


def _encode_with_trl(
    tokenizer: Any, samples: list[dict[str, Any]], **options: Any
) -> tuple[list[tuple[list[int], list[int]] | None], str]:
    """TRL's ``SFTTrainer._prepare_dataset`` on ``samples`` (ImportError without TRL)."""
    import dataclasses
    import tempfile
    import types
    import warnings

    import datasets
    import trl
    from trl import SFTConfig, SFTTrainer

    index = "__scale_inspect_index"
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    chat_template = None
    if options["assistant_only_loss"]:  # as SFTTrainer.__init__: a training template when the tokenizer has none
        try:
            from trl.chat_template_utils import get_training_chat_template, has_generation_markers
        except ImportError:
            pass
        else:
            if not has_generation_markers(tokenizer.chat_template):
                chat_template = get_training_chat_template(tokenizer)
    trainer = types.SimpleNamespace(
        _tokenizer=tokenizer,
        chat_template=chat_template,
        completion_only_loss=options["completion_only_loss"],
        _is_vlm=False,
    )
    progress = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated TrainingArguments defaults: not ours
            args = SFTConfig(
                output_dir=out,
                report_to=[],
                use_cpu=True,
                bf16=False,
                **{k: v for k, v in options.items() if k in fields},
            )
            if hasattr(args, "shuffle_dataset"):
                args.shuffle_dataset = False
            dataset = datasets.Dataset.from_list([{**s, index: i} for i, s in enumerate(samples)])
            prepared = SFTTrainer._prepare_dataset(trainer, dataset, tokenizer, args, False, None, "inspect")
    finally:
        if progress:
            datasets.enable_progress_bars()
    encoded: list[tuple[list[int], list[int]] | None] = [None] * len(samples)
    for row in prepared:
        ids = list(row["input_ids"])
        if "labels" in row:
            labels = list(row["labels"])
        else:  # older TRL: the collator builds the labels from the masks
            masks = [row["assistant_masks"]] if "assistant_masks" in row else []
            if options["completion_only_loss"] and "completion_mask" in row:
                masks.append(row["completion_mask"])
            labels = [t if all(bits) else -100 for t, *bits in zip(ids, *masks)]
        encoded[row[index]] = (ids, labels)
    return encoded, f"TRL SFTTrainer tokenization (trl {trl.__version__})"


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from ..core import SegmentTagger

    options = options_from(args)
    tokenizer = _load_tokenizer(args.tokenizer)
    tagger = SegmentTagger.from_tokenizer(tokenizer, options)
    colour = sys.stdout.isatty() and not args.plain
    names = ("ignored", *options.segment_names)
    totals = [0] * len(names)
    samples = _read_jsonl(args.data)[: args.num_samples]
    try:
        encoded, how = encode_as_trainer(
            tokenizer,
            samples,
            assistant_only_loss=args.assistant_only_loss,
            completion_only_loss={"true": True, "false": False}.get(args.completion_only_loss),
            max_length=args.max_length if args.max_length > 0 else None,
            truncation_mode=args.truncation_mode,
            dataset_text_field=args.dataset_text_field,
        )
    except ValueError as error:  # what the trainer would refuse too
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(how)
    pieces = tagger.table.pieces
    for index, item in enumerate(encoded):
        if item is None:
            print(f"--- sample {index}: dropped by the trainer (no supervised token left after truncation)")
            continue
        ids, labels = item
        segments = tagger.tag(torch.tensor([labels]), shift=False).segment_ids[0].tolist()
        counts = [segments.count(k) for k in range(len(names))]
        totals = [a + b for a, b in zip(totals, counts)]
        print(f"--- sample {index}: {len(ids)} tokens, " + ", ".join(f"{n}={c}" for n, c in zip(names, counts)))
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
    if samples and dataset_format(samples[0], args.dataset_text_field) == "conversational language modeling":
        if not args.assistant_only_loss:
            print(
                "NOTE: messages data without --assistant-only-loss: the trainer supervises the whole conversation "
                "(prompt and template tokens count as answer). Set assistant_only_loss: true in the trainer "
                "config (and here) to train the assistant turns only.",
                file=sys.stderr,
            )
    if samples and totals[1] == 0:
        print(
            f"WARNING: no {options.think_open!r}...{options.think_close!r} found in any supervised token. "
            "Check --think-open/--think-close against your chat template.",
            file=sys.stderr,
        )
        return 2
    return 0
