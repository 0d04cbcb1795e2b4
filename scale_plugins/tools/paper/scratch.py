"""``scale-plugins bench-paper``: the paper's four-arm comparison, at toy scale, on CPU, offline.

A tiny Qwen2-style model is trained *from scratch* (``tiny_causal_lm`` on the offline ``bpe_tokenizer``) on a
deterministic synthetic chain-of-thought task (multi-step arithmetic: a long ``<think>`` trace that works through
the steps, a short ``<answer>`` with the result; :func:`arith_cot`). Four arms, per seed:

* ``sft``: vanilla SFT, TRL's stock ``SFTTrainer``;
* ``scale_sft``: SCALe-SFT, :class:`~scale_plugins.trl.ScaleSFTTrainer` (default options unless ``--scale-set``);
* ``sft_grpo`` / ``scale_sft_grpo``: TRL's ``GRPOTrainer`` (no vLLM) continuing from the SFT checkpoint of that
  seed, rewards :func:`~scale_plugins.rewards.format_reward` + :func:`~scale_plugins.rewards.accuracy_reward`.

Within a seed every arm has the same model initialisation, data, data order, steps and learning rate; the two
GRPO arms get the same GRPO budget. Evaluation is greedy generation on a held-out split that shares no question
with the training split: answer accuracy (``accuracy_reward``), malformed rate (``format_reward == 0``), mean
think length in tokens, and training wall time of SFT and GRPO. Writes ``results.json``, ``results.md`` and plots.

``--model smollm2`` runs the comparison on a real pretrained instruct model instead (SmolLM2-135M-Instruct + LoRA,
bf16 on CPU, built-in task families or your ``--train-file`` / ``--eval-file``):
:mod:`scale_plugins.tools.paper.pretrained`. docs/results.md reports both.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from ...data import synthetic_cot
from .common import (
    accuracy_vs_time_panel,
    generate,
    grpo_train,
    json_default,
    machine_info,
    mean_std,
    pyplot,
    quiet_libraries,
    segment_ce,
    step_curve,
    summarize_arms,
    think_part,
    timed_train,
    write_completions,
)

ARMS = ("sft", "scale_sft", "sft_grpo", "scale_sft_grpo")
ARM_LABELS = {
    "sft": "vanilla SFT",
    "scale_sft": "SCALe-SFT",
    "sft_grpo": "vanilla SFT + GRPO",
    "scale_sft_grpo": "SCALe-SFT + GRPO",
}
METRICS = (
    "accuracy",
    "malformed_rate",
    "mean_think_tokens",
    "trace_accuracy",
    "answer_trace_agreement",
    "think_ce",
    "answer_ce",
)
TIMES = ("sft_time_s", "grpo_time_s", "total_time_s")

logger = logging.getLogger("scale_plugins")


# -- the task -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """Knobs of :func:`arith_cot`. Fixed per size *before* any comparison of arms (see docs/results.md)."""

    min_ops: int = 2
    max_ops: int = 5
    start_max: int = 20
    operand_max: int = 9
    ops: str = "+-*"
    data_seed: int = 1234  # the data is the same for every bench seed; the bench seed moves init and data order


def arith_cot(n: int, seed: int = 0, task: Task = Task()) -> list[dict[str, Any]]:
    """``n`` samples in the format of :func:`scale_plugins.data.synthetic_cot`, with the task's difficulty knobs.

    With the default :class:`Task` (and any ``data_seed``) it produces exactly ``synthetic_cot(n, seed)``.
    Each sample: ``{"messages": [user, assistant], "solution": "<number>", "question": "<user text>"}``.
    """
    samples = synthetic_cot(
        n,
        seed,
        min_ops=task.min_ops,
        max_ops=task.max_ops,
        start_max=task.start_max,
        operand_max=task.operand_max,
        operators=task.ops,
    )
    return [{**sample, "question": sample["messages"][0]["content"]} for sample in samples]


def task_splits(task: Task, n_train: int, n_eval: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): deterministic in ``task``; no held-out question occurs in train, none twice in held-out."""
    train = arith_cot(n_train, seed=task.data_seed, task=task)
    seen = {s["question"] for s in train}
    held_out: list[dict[str, Any]] = []
    offset = 1
    while len(held_out) < n_eval:
        for s in arith_cot(4 * n_eval, seed=task.data_seed + 7919 * offset, task=task):
            if s["question"] not in seen:
                seen.add(s["question"])
                held_out.append(s)
                if len(held_out) == n_eval:
                    break
        offset += 1
        if offset > 50:
            raise ValueError("the task has too few distinct questions for a disjoint held-out split")
    return train, held_out


# -- sizes ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Size:
    task: Task
    n_train: int
    n_eval: int
    hidden_size: int
    num_layers: int
    sft_steps: int
    batch_size: int
    learning_rate: float
    grpo_steps: int
    grpo_prompts_per_step: int
    num_generations: int
    grpo_learning_rate: float
    max_new_tokens: int
    eval_batch_size: int = 64


SIZES: dict[str, Size] = {
    "default": Size(
        task=Task(ops="+-", min_ops=1, max_ops=3, start_max=9),
        n_train=4000,
        n_eval=256,
        hidden_size=128,
        num_layers=2,
        sft_steps=500,
        batch_size=16,
        learning_rate=3e-3,
        grpo_steps=20,
        grpo_prompts_per_step=4,
        num_generations=4,
        grpo_learning_rate=2e-5,
        max_new_tokens=128,
    ),
    "smoke": Size(
        task=Task(min_ops=1, max_ops=2),
        n_train=64,
        n_eval=8,
        hidden_size=32,
        num_layers=1,
        sft_steps=4,
        batch_size=4,
        learning_rate=3e-3,
        grpo_steps=1,
        grpo_prompts_per_step=2,
        num_generations=2,
        grpo_learning_rate=1e-4,
        max_new_tokens=16,
        eval_batch_size=8,
    ),
}


# -- evaluation -----------------------------------------------------------------------------------------------

_LAST_NUMBER_RE = re.compile(r"-?\d+")


def score_completions(completions: list[str], solutions: list[str], tokenizer: Any) -> dict[str, Any]:
    """Accuracy, malformed rate, think length and trace diagnostics of decoded completions."""
    from ...rewards import accuracy_reward, extract_answer, format_reward

    acc = accuracy_reward(completions, solution=solutions)
    fmt = format_reward(completions)
    think_tokens, trace_ok, agree = [], [], []
    for text, gold in zip(completions, solutions):
        think = think_part(text)
        think_tokens.append(len(tokenizer(think, add_special_tokens=False)["input_ids"]))
        numbers = _LAST_NUMBER_RE.findall(think)
        trace_value = numbers[-1] if numbers else None  # "After all the steps the value is X."
        trace_ok.append(float(trace_value == gold))
        answer = extract_answer(text)
        agree.append(float(trace_value is not None and answer is not None and answer == trace_value))
    n = max(len(completions), 1)
    return {
        "accuracy": sum(a or 0.0 for a in acc) / n,
        "malformed_rate": sum(1.0 - f for f in fmt) / n,
        "mean_think_tokens": sum(think_tokens) / n,
        "trace_accuracy": sum(trace_ok) / n,
        "answer_trace_agreement": sum(agree) / n,
    }


def evaluate(
    model: Any, tokenizer: Any, held_out: list[dict[str, Any]], size: Size
) -> tuple[dict[str, Any], list[str]]:
    completions = generate(
        model, tokenizer, [s["messages"][:1] for s in held_out], size.max_new_tokens, size.eval_batch_size
    )  # float32: the tiny model is fast enough
    metrics = score_completions(completions, [s["solution"] for s in held_out], tokenizer)
    metrics.update(segment_ce(model, tokenizer, held_out, size.eval_batch_size))
    return metrics, completions


# -- training -------------------------------------------------------------------------------------------------


def train_sft(
    kind: str, size: Size, seed: int, train: list[dict[str, Any]], out: Path, scale_set: dict[str, Any]
) -> tuple[Any, float, list[dict]]:
    """Train from scratch; returns (model, train wall seconds, log_history)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from ...hf.args import cpu_training_args
    from ...hf.offline_tokenizers import bpe_tokenizer
    from ...hf.tiny_model import tiny_causal_lm
    from ...trl import ScaleSFTConfig, ScaleSFTTrainer

    tokenizer = bpe_tokenizer()
    model = tiny_causal_lm(tokenizer, hidden_size=size.hidden_size, num_layers=size.num_layers, seed=seed)
    dataset = datasets.Dataset.from_list([{"messages": s["messages"]} for s in train])
    common = dict(
        max_steps=size.sft_steps,
        per_device_train_batch_size=size.batch_size,
        learning_rate=size.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, size.sft_steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, size.sft_steps // 30),
        max_length=256,
        assistant_only_loss=True,
        **cpu_training_args(out, seed),
        disable_tqdm=True,
    )
    if kind == "scale_sft":
        config = ScaleSFTConfig(**common, **{f"scale_{k}": v for k, v in scale_set.items()})
        trainer = ScaleSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer)
    elapsed, history = timed_train(trainer)
    return trainer.model, elapsed, history


def train_grpo(
    model_dir: Path, size: Size, seed: int, train: list[dict[str, Any]], out: Path
) -> tuple[Any, float, list[dict]]:
    """GRPO from an SFT checkpoint with format_reward + accuracy_reward; returns (model, wall seconds, log_history)."""
    from transformers import AutoModelForCausalLM

    from ...hf.args import cpu_training_args
    from ...hf.offline_tokenizers import bpe_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    rows = [{"prompt": s["messages"][:1], "solution": s["solution"]} for s in train]
    args = {**cpu_training_args(out, seed), "disable_tqdm": True}
    return grpo_train(model, copy.deepcopy(bpe_tokenizer()), rows, size, args)


def _load(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")


def run_seed(
    seed: int, size: Size, arms: tuple[str, ...], out: Path, scale_set: dict[str, Any], train, held_out
) -> list[dict[str, Any]]:
    """All requested arms for one seed; each arm's record has its metrics, times and log history."""
    from ...hf.offline_tokenizers import bpe_tokenizer

    tokenizer = bpe_tokenizer()
    records = []
    for sft_arm in ("sft", "scale_sft"):
        needed = sft_arm in arms or f"{sft_arm}_grpo" in arms
        if not needed:
            continue
        arm_dir = out / f"seed{seed}" / sft_arm
        model, elapsed, history = train_sft(sft_arm, size, seed, train, arm_dir, scale_set)
        model.save_pretrained(arm_dir / "model")
        if sft_arm in arms:
            metrics, completions = evaluate(_load(arm_dir / "model"), tokenizer, held_out, size)
            write_completions(out / "completions" / f"seed{seed}_{sft_arm}.jsonl", held_out, completions)
            records.append(_record(seed, sft_arm, metrics, elapsed, 0.0, history, completions))
            _progress(records[-1])
        grpo_arm = f"{sft_arm}_grpo"
        if grpo_arm in arms:
            model, g_elapsed, g_history = train_grpo(
                arm_dir / "model", size, seed, train, out / f"seed{seed}" / grpo_arm
            )
            metrics, completions = evaluate(model, tokenizer, held_out, size)
            write_completions(out / "completions" / f"seed{seed}_{grpo_arm}.jsonl", held_out, completions)
            records.append(_record(seed, grpo_arm, metrics, elapsed, g_elapsed, g_history, completions, history))
            _progress(records[-1])
    return records


def _record(seed, arm, metrics, sft_time, grpo_time, history, completions, sft_history=None) -> dict[str, Any]:
    return {
        "seed": seed,
        "arm": arm,
        **metrics,
        "sft_time_s": sft_time,
        "grpo_time_s": grpo_time,
        "total_time_s": sft_time + grpo_time,
        "log_history": history if sft_history is None else {"sft": sft_history, "grpo": history},
        "sample_completions": completions[:3],
    }


def _progress(r: dict[str, Any]) -> None:
    print(
        f"  seed {r['seed']} {ARM_LABELS[r['arm']]:<20} acc={r['accuracy']:.3f} malformed={r['malformed_rate']:.3f} "
        f"think={r['mean_think_tokens']:.1f} trace_acc={r['trace_accuracy']:.3f} "
        f"sft={r['sft_time_s']:.1f}s grpo={r['grpo_time_s']:.1f}s",
        flush=True,
    )


def checkpoint_segment_ce(output_dir: str | Path, size_name: str = "default") -> dict[str, dict[str, dict[str, float]]]:
    """Held-out think/answer CE of the SFT checkpoints a finished run left in ``output_dir`` (mean, std over seeds).

    For runs made before the CE columns existed; newer runs have them in ``results.json`` already.
    """
    from transformers import AutoModelForCausalLM

    from ...hf.offline_tokenizers import bpe_tokenizer

    size = SIZES[size_name]
    _, held_out = task_splits(size.task, size.n_train, size.n_eval)
    values: dict[str, dict[str, list[float]]] = {}
    for model_dir in sorted(Path(output_dir).glob("seed*/*/model")):
        arm = model_dir.parent.name
        ce = segment_ce(AutoModelForCausalLM.from_pretrained(str(model_dir)), bpe_tokenizer(), held_out)
        for key, value in ce.items():
            values.setdefault(arm, {}).setdefault(key, []).append(value)
    return {arm: {key: mean_std(v) for key, v in per_key.items()} for arm, per_key in values.items()}


# -- summary, table, plots ------------------------------------------------------------------------------------


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    return summarize_arms(records, ARMS, METRICS + TIMES)


def markdown_table(summary: dict[str, Any]) -> str:
    with_ce = all("think_ce" in m for m in summary.values())
    head = (
        "| arm | answer accuracy | malformed | think tokens | trace correct | answer = trace | "
        + ("held-out think CE | held-out answer CE | " if with_ce else "")
        + "SFT time (s) | GRPO time (s) |\n|"
        + "---|" * (10 if with_ce else 8)
        + "\n"
    )
    lines = []
    for arm, m in summary.items():

        def pm(key: str, pct: bool = False, digits: int = 1, m: dict = m) -> str:
            mean, std = m[key]["mean"], m[key]["std"]
            if pct:
                return f"{100 * mean:.1f}% ± {100 * std:.1f}"
            return f"{mean:.{digits}f} ± {std:.{digits}f}"

        lines.append(
            f"| {ARM_LABELS[arm]} | {pm('accuracy', True)} | {pm('malformed_rate', True)} | "
            f"{pm('mean_think_tokens')} | {pm('trace_accuracy', True)} | {pm('answer_trace_agreement', True)} | "
            + (f"{pm('think_ce', digits=3)} | {pm('answer_ce', digits=3)} | " if with_ce else "")
            + f"{pm('sft_time_s')} | {pm('grpo_time_s')} |"
        )
    return head + "\n".join(lines) + "\n"


COLOURS = {"sft": "tab:blue", "scale_sft": "tab:orange", "sft_grpo": "tab:cyan", "scale_sft_grpo": "tab:red"}


def plot_accuracy_vs_time(records: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    accuracy_vs_time_panel(ax, records, summary, ARM_LABELS, COLOURS)
    for base in ("sft", "scale_sft"):
        if base in summary and f"{base}_grpo" in summary:
            a, b = summary[base], summary[f"{base}_grpo"]
            ax.annotate(
                "",
                xy=(b["total_time_s"]["mean"], 100 * b["accuracy"]["mean"]),
                xytext=(a["total_time_s"]["mean"], 100 * a["accuracy"]["mean"]),
                arrowprops={"arrowstyle": "->", "color": COLOURS[base], "alpha": 0.6},
            )
    n_seeds = len({r["seed"] for r in records})
    ax.set_title(f"accuracy vs training time (mean ± std over {n_seeds} seeds; dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_training(records: list[dict[str, Any]], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))

    def band(ax: Any, arm: str, key: str, label: str, **kw: Any) -> None:
        steps, mean, std = step_curve([r for r in records if r["arm"] == arm], key)
        if not steps:
            return
        (line,) = ax.plot(steps, mean, label=label, **kw)
        ax.fill_between(
            steps,
            [m - s for m, s in zip(mean, std)],
            [m + s for m, s in zip(mean, std)],
            color=line.get_color(),
            alpha=0.2,
        )

    band(left, "sft", "loss", "vanilla SFT loss (token mean)", color="tab:blue")
    band(left, "scale_sft", "loss", "SCALe loss (weighted)", color="black")
    band(left, "scale_sft", "scale/think_loss", "SCALe: think loss", color="tab:green")
    band(left, "scale_sft", "scale/answer_loss", "SCALe: answer loss", color="tab:red")
    left.set_yscale("log")
    left.set_xlabel("optimizer step")
    left.set_title("SFT training losses (mean ± std over seeds)")
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=8)
    left.grid(alpha=0.3)
    band(right, "scale_sft", "scale/think_weight", "think weight", color="tab:green")
    band(right, "scale_sft", "scale/answer_weight", "answer weight", color="tab:red")
    right.set_xlabel("optimizer step")
    right.set_title("SCALe segment weights")
    right.set_ylim(0, 1)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(
    size_name: str = "default",
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    output_dir: str | Path = "bench_paper",
    arms: list[str] | tuple[str, ...] = ARMS,
    threads: int = 1,
    scale_set: dict[str, Any] | None = None,
    sft_steps: int | None = None,
    grpo_steps: int | None = None,
    command: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    import torch

    t_start = time.perf_counter()
    quiet_libraries(threads)
    size = SIZES[size_name]
    if sft_steps is not None:
        size = dataclasses.replace(size, sft_steps=sft_steps)
    if grpo_steps is not None:
        size = dataclasses.replace(size, grpo_steps=grpo_steps)
    scale_set = scale_set or {}
    arms = tuple(a for a in ARMS if a in arms)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = task_splits(size.task, size.n_train, size.n_eval)
    from ...hf.offline_tokenizers import bpe_tokenizer
    from ...hf.tiny_model import tiny_causal_lm

    n_params = sum(p.numel() for p in tiny_causal_lm(bpe_tokenizer(), size.hidden_size, size.num_layers).parameters())
    print(
        f"bench-paper ({size_name}): tiny Qwen2 from scratch ({n_params / 1e6:.2f}M params), {len(train)} train / "
        f"{len(held_out)} held-out samples, {size.sft_steps} SFT steps x {size.batch_size}, {size.grpo_steps} GRPO "
        f"steps x {size.grpo_prompts_per_step} prompts x {size.num_generations} generations; seeds {list(seeds)}; "
        f"arms {list(arms)}; SCALe options {scale_set or 'defaults'}; {torch.get_num_threads()} torch thread(s)",
        flush=True,
    )
    records: list[dict[str, Any]] = []
    seed_walls: dict[str, float] = {}
    resumed: list[int] = []
    fingerprint = json.loads(
        json.dumps({"config": dataclasses.asdict(size), "scale_options": scale_set, "arms": list(arms)})
    )
    for seed in seeds:
        cache = out / f"seed{seed}" / "records.json"
        if resume and cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("fingerprint") == fingerprint:
                print(f"  seed {seed}: reusing {cache} (--resume)", flush=True)
                records += saved["records"]
                seed_walls[str(seed)] = saved["wall_time_s"]
                resumed.append(seed)
                continue
        t_seed = time.perf_counter()
        seed_records = run_seed(seed, size, arms, out, scale_set, train, held_out)
        seed_walls[str(seed)] = time.perf_counter() - t_seed
        cache.parent.mkdir(parents=True, exist_ok=True)
        payload = {"fingerprint": fingerprint, "wall_time_s": seed_walls[str(seed)], "records": seed_records}
        cache.write_text(json.dumps(payload, default=json_default))
        records += seed_records
    summary = summarize(records)
    wall = time.perf_counter() - t_start
    result = {
        "command": command,
        "size": size_name,
        "config": dataclasses.asdict(size),
        "scale_options": scale_set or "defaults",
        "seeds": list(seeds),
        "arms": list(arms),
        "n_params": n_params,
        "machine": machine_info(),
        "total_wall_time_s": wall,  # this invocation, set-up and plots included
        "seed_wall_time_s": seed_walls,  # per seed, all its arms (kept across --resume)
        "resumed_seeds": resumed,
        "summary": summary,
        "runs": records,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=json_default))
    table = markdown_table(summary)
    (out / "results.md").write_text(
        f"# bench-paper results ({size_name})\n\n`{command or 'scale-plugins bench-paper'}`\n\n"
        f"{len(seeds)} seed(s), mean ± std; total wall time {wall / 60:.1f} min\n\n" + table
    )
    plot_accuracy_vs_time(records, summary, out / "accuracy_vs_time.png")
    plot_training(records, out / "scale_training.png")
    print("\n" + table)
    print(f"total wall time {wall:.0f}s; results in {out}/results.json, results.md, *.png")
    return result
