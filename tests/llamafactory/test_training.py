"""SCALe through LLaMA-Factory's own training entry (``run_exp``, patched) in this process: tiny model, CPU."""

from __future__ import annotations

import math

import pytest
from transformers import TrainerCallback

from scale_plugins.core import ScaleOptions, answer_weight

from .helpers import json_state, train_config, train_in_process

pytestmark = pytest.mark.slow


class _Recorder(TrainerCallback):
    """Records the number of training rows (packed rows when packing)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.rows = len(kwargs["train_dataloader"].dataset)


def test_equal_weights_token_normalization_match_the_stock_loss(tiny, patched, tmp_path):
    # batch 2 x 2 accumulation steps: also checks that the step's loss is not divided by the accumulation again
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2)
    stock = train_in_process(train_config(tiny, tmp_path / "stock", use_scale_loss=None, **common))
    equal = train_in_process(
        train_config(
            tiny,
            tmp_path / "scale",
            scale_schedule="constant",
            scale_answer_weight_start=0.5,
            scale_normalization="token",
            **common,
        )
    )
    assert not any(key.startswith("scale/") for key in stock[0]), "the stock run must not use SCALe"
    assert equal[0]["scale/answer_weight"] == 0.5 and equal[0]["scale/think_tokens"] > 0
    assert equal[0]["loss"] == pytest.approx(stock[0]["loss"], abs=1e-5)
    assert equal[0]["grad_norm"] == pytest.approx(stock[0]["grad_norm"], rel=1e-5)
    assert equal[1]["loss"] == pytest.approx(stock[1]["loss"], abs=1e-4)


def test_scale_changes_the_loss_when_weights_differ(tiny, patched, tmp_path):
    """The default SCALe loss (sample means, cosine weights) is not the stock loss. A one-step run is its own last
    step, so it trains at the end weight (answer 0.9, docs/concepts.md)."""
    stock = train_in_process(train_config(tiny, tmp_path / "stock", use_scale_loss=None, max_steps=1))
    scale = train_in_process(train_config(tiny, tmp_path / "scale", max_steps=1))
    think, answer = scale[0]["scale/think_loss"], scale[0]["scale/answer_loss"]
    weight = answer_weight(0, 1, ScaleOptions())
    assert weight == pytest.approx(0.9) and scale[0]["scale/answer_weight"] == pytest.approx(weight)
    assert scale[0]["loss"] == pytest.approx((1 - weight) * think + weight * answer, rel=1e-3)
    assert abs(scale[0]["loss"] - stock[0]["loss"]) > 1e-4


def test_neat_packing_matches_unpacked(tiny, patched, tmp_path):
    """Per-sample means respect sample boundaries inside packed rows (position_ids restart at 0)."""
    # 6 samples in one optimizer step either way; cutoff 256 packs ~3 samples per row
    common = dict(cutoff_len=256, max_samples=6, per_device_train_batch_size=8, max_steps=1)
    unpacked_rows, packed_rows = _Recorder(), _Recorder()
    unpacked = train_in_process(train_config(tiny, tmp_path / "unpacked", **common), [unpacked_rows])
    packed = train_in_process(
        train_config(tiny, tmp_path / "packed", packing=True, neat_packing=True, **common), [packed_rows]
    )
    assert unpacked_rows.rows == 6 and packed_rows.rows < 6, "the packed run must put several samples in a row"
    for key in ("scale/think_tokens", "scale/answer_tokens"):
        assert packed[0][key] == unpacked[0][key]
    for key in ("loss", "scale/think_loss", "scale/answer_loss"):
        assert packed[0][key] == pytest.approx(unpacked[0][key], abs=1e-5)
    assert packed[0]["grad_norm"] == pytest.approx(unpacked[0]["grad_norm"], rel=1e-5)


def test_gradient_accumulation_is_exact_with_sample_normalization(tiny, patched, tmp_path):
    one = train_in_process(train_config(tiny, tmp_path / "one", per_device_train_batch_size=4))
    accumulated = train_in_process(
        train_config(tiny, tmp_path / "acc", per_device_train_batch_size=1, gradient_accumulation_steps=4)
    )
    for a, b in zip(one, accumulated, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_weights_follow_the_configured_schedule(tiny, patched, tmp_path):
    config = train_config(
        tiny,
        tmp_path / "step",
        max_steps=4,
        scale_schedule="step",
        scale_step_at=0.5,
        scale_answer_weight_start=0.3,
        scale_answer_weight_end=0.8,
    )
    logs = train_in_process(config)
    options = ScaleOptions(schedule="step", step_at=0.5, answer_weight_start=0.3, answer_weight_end=0.8)
    expected = [answer_weight(step, 4, options) for step in range(4)]
    assert expected == [0.3, 0.3, 0.8, 0.8]
    assert [entry["scale/answer_weight"] for entry in logs] == pytest.approx(expected)
    assert [entry["scale/think_weight"] for entry in logs] == pytest.approx([1 - w for w in expected])


def test_evaluation_reports_plain_ce_and_the_segment_losses(tiny, patched, tmp_path):
    """Evaluation in a SCALe run (docs/concepts.md, Evaluation): ``eval_loss`` is the plain cross-entropy, as the
    stock trainer reports it (comparable with a vanilla run), ``eval_scale/ce`` the same over the whole eval set, and
    ``eval_scale/<segment>_loss`` the segment losses for model selection; none depends on the schedule's weights."""
    config = train_config(
        tiny, tmp_path / "eval", val_size=4, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8
    )
    train_in_process(config)
    evals = [entry for entry in json_state(tmp_path / "eval")["log_history"] if "eval_loss" in entry]
    assert len(evals) == 1 and evals[0]["step"] == 2
    entry = evals[0]
    assert entry["eval_loss"] == pytest.approx(entry["eval_scale/ce"], rel=1e-5)  # one eval batch: the same mean
    assert entry["eval_scale/think_tokens"] > 0 and entry["eval_scale/answer_tokens"] > 0
    assert all(math.isfinite(entry[f"eval_scale/{name}_loss"]) for name in ("think", "answer"))
    assert "eval_scale/answer_weight" not in entry
