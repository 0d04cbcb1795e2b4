from __future__ import annotations

import copy
from typing import Any

import datasets

from scale_plugins.data import synthetic_cot
from scale_plugins.testing import tiny_causal_lm

_MODEL_CACHE: dict[tuple[str, int, int], Any] = {}
# eval metrics that must not depend on the eval batch size or the number of ranks
EVAL_KEYS = ("eval_scale/think_loss", "eval_scale/answer_loss", "eval_scale/ce", "eval_scale/answer_tokens")


def model(tokenizer, seed: int = 0):
    # keyed by the tokenizer too: a model sized for another tokenizer's vocabulary must never be handed out
    key = (tokenizer.name_or_path, len(tokenizer), seed)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, seed=seed)
    return copy.deepcopy(_MODEL_CACHE[key])


def save_model(path, tokenizer):
    """The tiny model and its tokenizer saved to ``path``, as a local checkpoint for the command-line entries."""
    model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def dataset(n: int = 16, seed: int = 0, kind: str = "prompt-completion", think: bool = True) -> datasets.Dataset:
    rows = []
    for s in synthetic_cot(n, seed=seed):
        user, assistant = s["messages"]
        content = assistant["content"]
        if not think:
            content = content[content.index("<answer>") :]
        if kind == "prompt-completion":
            rows.append({"prompt": [user], "completion": [{"role": "assistant", "content": content}]})
        else:
            rows.append({"messages": [user, {"role": "assistant", "content": content}]})
    return datasets.Dataset.from_list(rows)


def config(cls, tmp_path, **kwargs):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        max_length=192,
        seed=0,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    base.update(kwargs)
    return cls(**base)
