"""A tiny LLaVA through TRL's vision collator with SCALe (Qwen2.5-VL needs torchvision: see docs/trl.md)."""

from __future__ import annotations

import math

import datasets
import pytest

from scale_plugins.core import ScaleOptions, answer_weight
from scale_plugins.data import synthetic_cot
from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers

pytestmark = pytest.mark.slow


def vlm_dataset(n: int) -> datasets.Dataset:
    from PIL import Image

    rows = []
    for i, sample in enumerate(synthetic_cot(n, seed=3)):
        user, assistant = sample["messages"]
        image = Image.new("RGB", (32, 32), color=(i * 37 % 255, 90, 160))
        rows.append(
            {
                "images": [image],
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user["content"]}]}],
                "completion": [{"role": "assistant", "content": [{"type": "text", "text": assistant["content"]}]}],
            }
        )
    return datasets.Dataset.from_list(rows)


def test_tiny_llava_five_steps(tmp_path):
    from scale_plugins.hf.tiny import tiny_llava

    model, processor = tiny_llava()
    trainer = ScaleSFTTrainer(
        model=model,
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=5, max_length=None),
        train_dataset=vlm_dataset(20),
        processing_class=processor,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values" in batch
    trainer.train()
    rows = [r for r in trainer.state.log_history if "scale/answer_weight" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        assert math.isclose(r["scale/answer_weight"], answer_weight(r["step"] - 1, 5, ScaleOptions()))
        assert r["scale/think_tokens"] > 0 and r["scale/answer_tokens"] > 0
        assert math.isfinite(r["scale/think_loss"]) and math.isfinite(r["scale/answer_loss"])
    # prompt-completion data: only the completion is supervised, so the answer segment is the short answer
    assert rows[0]["scale/answer_tokens"] < rows[0]["scale/think_tokens"] / 3
