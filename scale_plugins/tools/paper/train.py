"""Training of one run of a comparison study (:mod:`.study`): SFT (TRL's ``SFTTrainer`` or
:class:`~scale_plugins.trl.ScaleSFTTrainer`) from the model's entry in :mod:`.models`, and an optional GRPO stage
from the SFT model. What differs between models (LoRA or full, data format, precision) comes from that entry; what
differs between runs (steps, rate, schedule, SCALe options) from the study's design and arm."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .common import grpo_train, on_cuda, progress, timed_train
from .models import ModelSpec, lora_config

#: what a record keeps of the SFT log (the training plot) and of the GRPO log
SFT_LOG_KEYS = ("step", "loss", "learning_rate", "grad_norm")
GRPO_LOG_KEYS = ("step", "loss", "reward", "rewards/format_reward/mean", "rewards/accuracy_reward/mean")


def training_rows(spec: ModelSpec, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples (``prompt`` / ``completion`` message lists) as the model's entry feeds them to TRL."""
    if spec.data_format == "messages":
        return [{"messages": s["prompt"] + s["completion"]} for s in samples]
    if spec.data_format == "text":
        return [{"prompt": spec.prompt(s["prompt"]), "completion": s["completion"][-1]["content"]} for s in samples]
    return [{"prompt": s["prompt"], "completion": s["completion"]} for s in samples]


def training_args(spec: ModelSpec, out: Path, seed: int) -> dict[str, Any]:
    """``TrainingArguments`` keywords: an offline, seeded run on the CPU or, where there is one, a CUDA GPU; bf16
    autocast where the model's entry allows it and bf16 is fast (LoRA weights and optimizer state stay float32)."""
    from ...hf.args import cpu_training_args

    args = {**cpu_training_args(out, seed), "bf16": spec.precision() == "bf16", "disable_tqdm": True}
    if on_cuda():
        args["use_cpu"] = False
    return args


def train_sft(
    spec: ModelSpec,
    trainer: str,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    train: list[dict[str, Any]],
    out: Path,
    *,
    lora_r: int,
    warmup_divisor: int = 10,
    lr_scheduler: str = "cosine",
    scale_options: dict[str, Any] | None = None,
) -> tuple[Any, float, list[dict]]:
    """SFT from the model's entry; returns (model, train wall seconds, log_history). ``trainer``: ``sft`` (TRL's
    ``SFTTrainer``), ``scale_sft`` (``ScaleSFTTrainer`` with ``scale_options``) or ``none`` (the base model, untrained:
    0 seconds, no log); a LoRA is merged afterwards."""
    if trainer == "none":
        return spec.load(seed), 0.0, []
    import datasets
    from trl import SFTConfig, SFTTrainer

    from ...trl import ScaleSFTConfig, ScaleSFTTrainer

    progress(f"loading {spec.name}")
    model, tokenizer = spec.load(seed), spec.tokenizer()
    dataset = datasets.Dataset.from_list(training_rows(spec, train))
    common: dict[str, Any] = dict(
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type=lr_scheduler,
        warmup_steps=max(1, steps // warmup_divisor),
        weight_decay=0.0,
        logging_steps=max(1, steps // 12),
        max_length=spec.max_length,
        **training_args(spec, out, seed),
    )
    if spec.data_format == "messages":
        common["assistant_only_loss"] = True
    extra = {"peft_config": lora_config(spec, lora_r)} if spec.lora_targets is not None else {}
    if trainer == "scale_sft":
        config = ScaleSFTConfig(**common, **{f"scale_{k}": v for k, v in (scale_options or {}).items()})
        run = ScaleSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, **extra)
    elif trainer == "sft":
        run = SFTTrainer(
            model=model, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer, **extra
        )
    else:
        raise ValueError(f"trainer {trainer!r}: sft or scale_sft")
    elapsed, history = timed_train(run, "SFT")
    trained = run.model.merge_and_unload() if spec.lora_targets is not None else run.model
    return trained, elapsed, history


def train_grpo(
    spec: ModelSpec, model: Any, design: Any, seed: int, train: list[dict[str, Any]], out: Path
) -> tuple[Any, float, list[dict]]:
    """TRL's ``GRPOTrainer`` (``format_reward`` + ``accuracy_reward``) from an SFT model, sized by the design's
    ``grpo_*`` fields; a fresh LoRA for a LoRA model, merged afterwards. Returns (model, wall seconds, log)."""
    rows = [{"prompt": spec.prompt(s["prompt"]), "solution": s["solution"]} for s in train]
    extra = {"peft_config": lora_config(spec, design.lora_r)} if spec.lora_targets is not None else {}
    trained, elapsed, history = grpo_train(
        model, copy.deepcopy(spec.tokenizer()), rows, design, training_args(spec, out, seed), **extra
    )
    return (trained.merge_and_unload() if spec.lora_targets is not None else trained), elapsed, history


def compact_log(history: list[dict], keys: tuple[str, ...]) -> list[dict[str, float]]:
    """The training rows of a ``log_history`` with ``keys`` and SCALe's own (``scale/...``) only."""
    rows = []
    for row in history:
        if "loss" not in row or "train_runtime" in row:
            continue
        rows.append({k: v for k, v in row.items() if (k in keys or k.startswith("scale/")) and v is not None})
    return rows
