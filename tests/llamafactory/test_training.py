"""SCALe through LLaMA-Factory's own training entry (``run_exp``, patched) in this process: tiny model, CPU.

The contract (equal weights == the stock loss, gradient accumulation, neat packing, resume, a refused mode) is
tests/llamafactory/test_contract.py."""

from __future__ import annotations

import logging
import math

import pytest

from scale_plugins.core import ScaleOptions, answer_weight

from .helpers import json_state, train_config, train_in_process

pytestmark = pytest.mark.slow


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


@pytest.mark.parametrize("train_on_prompt", [True, False])
def test_a_trained_prompt_is_reported_once_with_the_fix(patched, tiny, tmp_path, caplog, train_on_prompt):
    """`train_on_prompt: true` supervises the prompt, which SCALe would weigh as answer: warned once, counted."""
    config = train_config(tiny, tmp_path / "out", train_on_prompt=train_on_prompt)
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        logs = train_in_process(config)
    # one record (LLaMA-Factory's logging set-up can hand caplog the same record twice)
    warnings = sorted(
        {(r.created, r.getMessage()) for r in caplog.records if "steps_with_supervised_prompt" in r.getMessage()}
    )
    if train_on_prompt:
        assert len(warnings) == 1 and "train_on_prompt: false" in warnings[0][1], warnings
        assert logs[-1]["scale/steps_with_supervised_prompt"] == 2
    else:
        assert not warnings and all("scale/steps_with_supervised_prompt" not in entry for entry in logs)
