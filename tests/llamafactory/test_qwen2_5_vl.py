"""Qwen2.5-VL end to end in LLaMA-Factory: ``scale-llamafactory train recipes/llamafactory/qwen2_5_vl_3b_scale_sft.yaml``
on a tiny model of the real architecture (windowed ViT, patch merger, M-RoPE), with LLaMA-Factory's real ``qwen2_vl``
template, multimodal plugin and collator, images in every sample.

LLaMA-Factory's collator sends M-RoPE ``position_ids`` of shape [4, B, T] (or [3, B, T]); SCALe reads sample boundaries from them
(the text positions, docs/concepts.md). The processor is Qwen2.5-VL's without its video processor, which needs
torchvision (no CPU build here): LLaMA-Factory's ``AutoProcessor`` is handed that one (``scale_plugins.testing``).
The recipe is run as it is, less DeepSpeed (LLaMA-Factory refuses it outside torchrun) and bf16 (CPU), with the
tiny model and data and a few steps.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from scale_plugins.core import ScaleOptions, answer_weight
from scale_plugins.data import synthetic_cot

from .helpers import json_state, step_logs, train_in_process, write_yaml
from .test_recipes import read_recipe

pytestmark = pytest.mark.slow

RECIPE = "qwen2_5_vl_3b_scale_sft"
IMAGE_PAD = "<|image_pad|>"
IMAGE_TOKENS = 4  # a 56 x 56 image: 4 x 4 patches of 14, merged 2 x 2
EQUAL = dict(scale_schedule="constant", scale_answer_weight_start=0.5, scale_answer_weight_end=0.5)


@pytest.fixture(scope="module")
def qwen_vl(tmp_path_factory) -> dict[str, Any]:
    """The tiny Qwen2.5-VL saved as a checkpoint, its image-only processor, and a sharegpt dataset with images."""
    from PIL import Image

    from scale_plugins.testing import tiny_qwen2_5_vl

    root = tmp_path_factory.mktemp("qwen2_5_vl")
    model, processor = tiny_qwen2_5_vl(hidden_size=32, image_size=56)
    model.save_pretrained(root / "model")
    processor.tokenizer.save_pretrained(root / "model")
    data = root / "data"
    data.mkdir()
    rows = []
    for i, sample in enumerate(synthetic_cot(8, seed=0, min_ops=1, max_ops=2)):
        image = data / f"img{i}.png"
        Image.new("RGB", (56, 56), color=(30 * i % 255, 80, 160)).save(image)
        user, assistant = sample["messages"]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>" + user["content"]},
                    {"role": "assistant", "content": assistant["content"]},
                ],
                "images": [str(image)],
            }
        )
    (data / "cot.json").write_text(json.dumps(rows))
    # the dataset entry the recipe's header describes
    info = {
        "scale_cot": {
            "file_name": "cot.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    return {
        "model": root / "model",
        "data": data,
        "processor": processor,
        "image_token_id": model.config.image_token_id,
    }


@pytest.fixture
def image_only_processor(qwen_vl, monkeypatch):
    """LLaMA-Factory's loader gets the image-only processor (AutoProcessor would need torchvision for the video part)."""
    from llamafactory.model import loader

    class _AutoProcessor:
        @staticmethod
        def from_pretrained(path, **kwargs):
            assert Path(path) == qwen_vl["model"]
            return qwen_vl["processor"]

    monkeypatch.setattr(loader, "AutoProcessor", _AutoProcessor)


def recipe_config(qwen_vl: dict[str, Any], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    config = read_recipe(RECIPE)
    del config["deepspeed"]
    config.update(
        model_name_or_path=str(qwen_vl["model"]),
        dataset_dir=str(qwen_vl["data"]),
        output_dir=str(output_dir),
        bf16=False,
        use_cpu=True,
        cutoff_len=256,
        preprocessing_num_workers=1,
        dataloader_num_workers=0,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        plot_loss=False,
        seed=0,
    )
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


class _FirstBatch(TrainerCallback):
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))


def test_recipe_trains_through_the_command_with_images(qwen_vl, image_only_processor, patched, tmp_path, monkeypatch):
    """``scale-llamafactory train <recipe>`` (the launcher in this process, so the processor can be handed in): the
    M-RoPE batches train, image tokens are never supervised, the weights follow the recipe's cosine schedule."""
    from llamafactory.train import tuner

    from scale_plugins.llamafactory.cli import main

    out = tmp_path / "out"
    config = write_yaml(tmp_path / f"{RECIPE}.yaml", recipe_config(qwen_vl, out))
    first = _FirstBatch()
    run_exp = tuner.run_exp
    monkeypatch.setattr(tuner, "run_exp", lambda args=None, callbacks=None: run_exp(args, [first]))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the launcher rewrites sys.argv
    assert main(["train", str(config)]) == 0

    batch = first.batch
    assert "pixel_values" in batch and "image_grid_thw" in batch
    # M-RoPE position ids, the case SCALe must read: [4, B, T] here (text positions, then the 3 M-RoPE planes)
    position_ids = batch["position_ids"]
    assert position_ids.shape[0] in (3, 4) and position_ids.shape[1:] == batch["input_ids"].shape
    is_image = batch["input_ids"] == qwen_vl["image_token_id"]
    assert (is_image.sum(dim=1) == IMAGE_TOKENS).all()
    assert (batch["labels"][is_image] == -100).all(), "image tokens must never be supervised"

    logs = step_logs(out)
    assert len(logs) == 2
    expected = [answer_weight(step, 2, ScaleOptions()) for step in range(2)]
    assert [entry["scale/answer_weight"] for entry in logs] == pytest.approx(expected)
    for entry in logs:
        assert entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0
        for key in ("loss", "grad_norm", "scale/think_loss", "scale/answer_loss"):
            assert math.isfinite(entry[key]), (key, entry)
        # the answer is the short `<answer>...</answer>` + stop token: nothing of the prompt or the image
        assert entry["scale/answer_tokens"] < entry["scale/think_tokens"] / 3
    assert json_state(out)["global_step"] == 2


def test_equal_weights_give_the_stock_loss_and_gradient(qwen_vl, image_only_processor, patched, tmp_path):
    """answer_weight_start = end = 0.5 with token normalization is LLaMA-Factory's stock loss on Qwen2.5-VL batches
    (images, M-RoPE position ids): same loss and gradient norm."""
    # the recipe's scale_* keys are the defaults: allowed without use_scale_loss (they change nothing)
    stock = train_in_process(recipe_config(qwen_vl, tmp_path / "stock", use_scale_loss=None, max_steps=1))
    assert not any(key.startswith("scale/") for key in stock[0]), "the stock run must not use SCALe"
    equal = train_in_process(
        recipe_config(qwen_vl, tmp_path / "equal", scale_normalization="token", **EQUAL, max_steps=1)
    )
    assert equal[0]["scale/answer_weight"] == 0.5 and equal[0]["scale/think_tokens"] > 0
    assert equal[0]["loss"] == pytest.approx(stock[0]["loss"], abs=1e-5)
    assert equal[0]["grad_norm"] == pytest.approx(stock[0]["grad_norm"], rel=1e-5)
