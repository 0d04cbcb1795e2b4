"""Tiny vision-language models through TRL's vision collator with SCALe: LLaVA (CLIP + Qwen2) and Qwen2.5-VL (its
own architecture: windowed ViT, patch merger, M-RoPE; its processor without the torchvision-only video processor)."""

from __future__ import annotations

import copy
import importlib.metadata
import math

import datasets
import pytest
from trl import SFTConfig, SFTTrainer

from scale_plugins.core import ScaleOptions, answer_weight
from scale_plugins.data import synthetic_cot
from scale_plugins.testing import tiny_gemma3, tiny_llava, tiny_llava_next, tiny_qwen2_5_vl
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


# Stock SFTTrainer itself fails on Qwen2.5-VL batches with trl 0.24 + transformers 5.6 (LLaMA-Factory's pins): the
# batch's `mm_token_type_ids` come out shorter than `input_ids`, and the model's M-RoPE indexing raises IndexError.
needs_trl_1 = pytest.mark.skipif(
    int(importlib.metadata.version("trl").split(".")[0]) < 1,
    reason="stock SFTTrainer of trl 0.x fails on Qwen2.5-VL batches (mm_token_type_ids shorter than input_ids)",
)

# (builder(workdir), steps, image tokens per image): LLaVA and the paper's three architectures. Qwen2.5-VL's
# 151,936-token vocabulary makes its steps slower.
VLMS = {
    "llava": (lambda _: tiny_llava(), 5, 4),
    "qwen2_5_vl": pytest.param((lambda _: tiny_qwen2_5_vl(), 3, 4), marks=needs_trl_1),
    "llava_next": (tiny_llava_next, 3, 10),
    "gemma3": (tiny_gemma3, 3, 4),
}
PAPER_VLMS = ["qwen2_5_vl", "llava_next", "gemma3"]  # Qwen2.5-VL-3B, LLaVA-v1.6-Mistral-7B, Gemma-3-4B


@pytest.mark.parametrize("vlm", list(VLMS.values()), ids=list(VLMS))
def test_tiny_vlm_trains_with_scale(tmp_path, vlm):
    build, steps, image_tokens = vlm
    model, processor = build(tmp_path / "tokenizer")
    trainer = ScaleSFTTrainer(
        model=model,
        args=helpers.config(ScaleSFTConfig, tmp_path, max_steps=steps, max_length=None),
        train_dataset=vlm_dataset(4 * steps),
        processing_class=processor,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "pixel_values" in batch
    image_token = model.config.image_token_id
    assert ((batch["input_ids"] == image_token).sum(dim=1) == image_tokens).all()
    assert not (batch["labels"] == image_token).any()  # image tokens are never supervised
    trainer.train()
    rows = [r for r in trainer.state.log_history if "scale/answer_weight" in r]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert math.isclose(r["scale/answer_weight"], answer_weight(r["step"] - 1, steps, ScaleOptions()))
        assert r["scale/think_tokens"] > 0 and r["scale/answer_tokens"] > 0
        assert math.isfinite(r["scale/think_loss"]) and math.isfinite(r["scale/answer_loss"])
    # prompt-completion data: only the completion is supervised, so the answer segment is the short answer
    assert rows[0]["scale/answer_tokens"] < rows[0]["scale/think_tokens"] / 3


@pytest.mark.parametrize("vlm", [VLMS[name] for name in PAPER_VLMS], ids=PAPER_VLMS)
def test_paper_architectures_equal_weights_match_stock(tmp_path, vlm):
    """Equal weights + token normalization: the same loss and gradient as stock SFTTrainer on the batches of each of
    the paper's architectures (pixel values, image grids, M-RoPE / anyres / soft tokens), vision tower included."""
    from .test_trainer import EQUAL, assert_same_grads, one_step

    build, _, _ = vlm
    model, processor = build(tmp_path / "tokenizer")
    data = vlm_dataset(4)
    stock = SFTTrainer(
        model=copy.deepcopy(model),
        args=helpers.config(SFTConfig, tmp_path / "a", max_length=None),
        train_dataset=data,
        processing_class=processor,
    )
    loss_a, grads_a = one_step(stock)
    ours = ScaleSFTTrainer(
        model=model,
        args=helpers.config(ScaleSFTConfig, tmp_path / "b", max_length=None, **EQUAL),
        train_dataset=data,
        processing_class=processor,
    )
    loss_b, grads_b = one_step(ours)
    assert math.isclose(loss_a, loss_b, rel_tol=1e-6, abs_tol=1e-6)
    assert any(".visual." in name or ".vision_tower." in name for name in grads_b)
    assert_same_grads(grads_a, grads_b)


@needs_trl_1
def test_qwen2_5_vl_packed_mrope_batch_is_tagged_like_the_padded_one(tmp_path):
    """TRL refuses padding-free batches for vision datasets; packers that do pack Qwen2.5-VL (LLaMA-Factory's
    neat_packing, custom collators) pass the model's own M-RoPE ids, [3, 1, T] or [4, 1, T] with the text positions
    first. SCALe must find the same samples and segments in the packed row as in the padded batch."""
    import torch

    model, processor = tiny_qwen2_5_vl()
    trainer = ScaleSFTTrainer(
        model=model,
        args=helpers.config(ScaleSFTConfig, tmp_path, max_length=None, per_device_train_batch_size=3),
        train_dataset=vlm_dataset(3),
        processing_class=processor,
    )
    padded = next(iter(trainer.get_train_dataloader()))
    lengths = padded["attention_mask"].sum(dim=1).tolist()
    assert padded["attention_mask"][:, 0].all()  # right padding: each row's tokens come first
    planes, pieces, labels = [], [], []
    grids = padded["image_grid_thw"]
    for row, length in enumerate(lengths):
        ids = padded["input_ids"][row : row + 1, :length]
        mm = padded["mm_token_type_ids"][row : row + 1, :length]
        mrope, _ = model.model.get_rope_index(ids, mm, image_grid_thw=grids[row : row + 1])
        assert mrope.shape == (3, 1, length) and mrope[0, 0, 0] == 0
        planes.append(mrope)
        pieces.append(torch.arange(length).view(1, 1, -1))
        labels.append(padded["labels"][row, :length])
    packed_labels = torch.cat(labels).unsqueeze(0)
    # the packer masks each sample's first label, as every packing collator does
    want = trainer.scale_tag({"labels": padded["labels"]})
    for position_ids in (torch.cat(planes, dim=2), torch.cat([torch.cat(pieces, dim=2), torch.cat(planes, dim=2)])):
        got = trainer.scale_tag({"labels": packed_labels, "position_ids": position_ids})
        assert got.num_samples == 3
        start = 0
        for row, length in enumerate(lengths):
            assert got.sample_ids[0, start : start + length - 1].eq(row).all()
            # the last token of a sample predicts nothing in either layout
            assert torch.equal(got.segment_ids[0, start : start + length - 1], want.segment_ids[row, : length - 1])
            start += length
