"""No silent prompt-as-answer: SCALe counts every supervised token outside the think block as answer, so a supervised
prompt is weighed as answer. The trainer says so once (with the fix for TRL), and the shipped TRL recipes take the
data format their header describes, in which no prompt token is supervised."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from pathlib import Path

import datasets
import pytest
import torch

from scale_plugins.core import SegmentBatch
from scale_plugins.hf.trainer import samples_supervised_from_start
from scale_plugins.testing import tiny_gemma3, tiny_llava_next, tiny_qwen2_5_vl
from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers

FALLBACK = "steps_with_supervised_prompt"
TRL_0 = int(importlib.metadata.version("trl").split(".")[0]) < 1
ROOT = Path(__file__).parents[2]


def _segments(rows: list[list[int]], samples: list[list[int]]) -> SegmentBatch:
    return SegmentBatch(torch.tensor(rows), torch.tensor(samples), max(max(r) for r in samples) + 1)


def test_samples_supervised_from_start_counts_samples_whose_start_is_trained():
    # 0 ignored, 1 think, 2 answer; two samples per row (packed), the second one supervised from its first target
    segments = _segments([[0, 0, 1, 2, 2, 2, 1, 2]], [[0, 0, 0, 0, 1, 1, 1, 1]])
    assert samples_supervised_from_start(segments) == 1
    assert samples_supervised_from_start(_segments([[0, 0, 0, 2], [0, 0, 1, 2]], [[0, 0, 0, 0], [1, 1, 1, 1]])) == 0
    assert samples_supervised_from_start(_segments([[0, 2, 2, 2], [2, 0, 0, 0]], [[0, 0, 0, 0], [1, 1, 1, 1]])) == 2


def _train(tmp_path, tokenizer, rows: datasets.Dataset, **config) -> ScaleSFTTrainer:
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=2, **config),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def test_messages_without_an_assistant_mask_warn_once_with_the_fix(tmp_path, tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        trainer = _train(tmp_path, tokenizer, helpers.dataset(8, kind="messages"))
    warnings = [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, then counted
    assert "the prompt is weighed as answer" in warnings[0] and "assistant_only_loss: true" in warnings[0]
    assert trainer._scale_fallbacks[FALLBACK] == 2  # both steps
    logged = [r for r in trainer.state.log_history if f"scale/{FALLBACK}" in r]
    assert logged and logged[-1][f"scale/{FALLBACK}"] == 2


@pytest.mark.parametrize(
    ("kind", "config"),
    [("messages", {"assistant_only_loss": True}), ("prompt-completion", {})],
    ids=["messages-assistant-only", "prompt-completion"],
)
def test_masked_prompts_do_not_warn(tmp_path, tokenizer, caplog, kind, config):
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        trainer = _train(tmp_path, tokenizer, helpers.dataset(8, kind=kind), **config)
    if kind == "prompt-completion" and TRL_0:
        # TRL 0.24 under transformers 5 measures the prompt with apply_chat_template(tokenize=True), which returns a
        # dict there (len 2): it masks 2 tokens and trains the rest of the prompt. The warning catches that.
        assert trainer._scale_fallbacks[FALLBACK] == 2
        return
    assert FALLBACK not in trainer._scale_fallbacks
    assert not [r for r in caplog.records if FALLBACK in r.getMessage()]


# -- the shipped TRL recipes, with the data format their header describes --------------------------------------------

needs_trl_1 = pytest.mark.skipif(
    TRL_0,
    reason="stock SFTTrainer of trl 0.x fails on Qwen2.5-VL batches (see test_vlm.py)",
)
# every TRL SFT recipe (test_every_sft_recipe_is_here), with a tiny model of its architecture
RECIPES = [
    pytest.param("qwen2_5_vl_3b_scale_sft", lambda _: tiny_qwen2_5_vl(), marks=needs_trl_1, id="qwen2_5_vl"),
    pytest.param("llava_1_6_mistral_7b_scale_sft", tiny_llava_next, id="llava_next"),
    pytest.param("gemma3_4b_scale_sft", tiny_gemma3, id="gemma3"),
]


def test_every_sft_recipe_is_here():
    shipped = {p.stem for p in (ROOT / "recipes" / "trl").glob("*.yaml") if not p.stem.startswith("grpo")}
    assert shipped == {param.values[0] for param in RECIPES}


def _recipe_args(stem: str, tmp_path) -> ScaleSFTConfig:
    """The recipe as TRL's parser reads it, with only what a CPU step needs changed (not its data settings)."""
    from scale_plugins.trl.cli import make_parser

    _, args, _, _ = make_parser().parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / "trl" / f"{stem}.yaml"), "--use_cpu", "true"],
        fail_with_unknown_args=True,
    )
    return dataclasses.replace(
        args,
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
    )


def _rows(n: int, kind: str) -> datasets.Dataset:
    from .test_vlm import vlm_dataset

    rows = vlm_dataset(n)
    if kind == "messages":  # the format the recipes' comments used to name
        rows = rows.map(lambda r: {"messages": r["prompt"] + r["completion"]}, remove_columns=["prompt", "completion"])
    return rows


@pytest.mark.slow
@pytest.mark.parametrize(("stem", "build"), RECIPES)
def test_recipe_data_format_trains_the_completion_only(tmp_path, stem, build):
    args = _recipe_args(stem, tmp_path)
    assert args.completion_only_loss is True and not args.assistant_only_loss
    model, processor = build(tmp_path / "tokenizer")
    rows = _rows(4, "prompt-completion")
    trainer = ScaleSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor)
    tokenizer = processor.tokenizer
    batch = next(iter(trainer.get_train_dataloader()))
    questions = [row["prompt"][0]["content"][1]["text"] for row in rows]
    for ids, labels in zip(batch["input_ids"], batch["labels"]):  # shuffled rows
        supervised = labels != -100
        first = int(supervised.nonzero()[0])
        prompt_text = tokenizer.decode(ids[:first])
        trained = tokenizer.decode(ids[supervised])
        assert any(q in prompt_text for q in questions)  # the question is in the masked prompt ...
        assert not any(q in trained for q in questions) and "user" not in trained  # ... never trained
        assert supervised[first:].sum() == supervised.sum()  # nothing supervised before the completion starts
        assert trained.lstrip().startswith("<think>"), trained[:80]
    trainer.train()
    assert FALLBACK not in trainer._scale_fallbacks  # SCALe saw no sample supervised from its start
    rows_logged = [r for r in trainer.state.log_history if "scale/answer_tokens" in r]
    assert rows_logged and rows_logged[0]["scale/think_tokens"] > 0


@pytest.mark.slow
def test_recipe_refuses_messages_rows(tmp_path):
    """`messages` rows (the whole conversation trained) stop with TRL's error under the recipes' completion_only_loss."""
    args = _recipe_args("gemma3_4b_scale_sft", tmp_path)
    model, processor = tiny_gemma3(tmp_path / "tokenizer")
    trainer = ScaleSFTTrainer(model=model, args=args, train_dataset=_rows(4, "messages"), processing_class=processor)
    with pytest.raises(ValueError, match="completion_only_loss"):
        next(iter(trainer.get_train_dataloader()))
