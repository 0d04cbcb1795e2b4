"""ScaleSFTTrainer on a CUDA GPU (skipped on CPU): bf16 training and Liger's layer kernels (``use_liger_kernel``).

Run with ``pytest -m gpu tests/trl`` on a machine with a GPU; ``use_liger_kernel`` also needs ``pip install
liger-kernel`` (Triton kernels: CUDA only; on CPU they fail with ``0 active drivers``).
"""

from __future__ import annotations

import math

import pytest
from trl import SFTConfig, SFTTrainer

from scale_plugins.core import ScaleOptions, answer_weight
from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers

pytestmark = pytest.mark.gpu

EQUAL = dict(scale_schedule="constant", scale_answer_weight_start=0.5, scale_normalization="token")


def gpu_config(cls, tmp_path, **kwargs):
    return helpers.config(cls, tmp_path, use_cpu=False, bf16=True, **kwargs)


def train_logs(trainer) -> list[dict]:
    trainer.train()
    return [row for row in trainer.state.log_history if "loss" in row]


def assert_scale_ran(rows: list[dict], max_steps: int) -> None:
    assert [row["step"] for row in rows] == list(range(1, max_steps + 1))
    for row in rows:
        assert row["scale/answer_weight"] == pytest.approx(answer_weight(row["step"] - 1, max_steps, ScaleOptions()))
        assert row["scale/think_tokens"] > 0 and row["scale/answer_tokens"] > 0
        for key in ("loss", "scale/think_loss", "scale/answer_loss", "grad_norm"):
            assert math.isfinite(row[key]), key


def test_bf16_trains_with_scale_on_cuda(tmp_path, tokenizer):
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=gpu_config(ScaleSFTConfig, tmp_path, max_steps=3),
        train_dataset=helpers.dataset(12),
        processing_class=tokenizer,
    )
    assert trainer.args.device.type == "cuda"
    assert_scale_ran(train_logs(trainer), 3)


@pytest.mark.parametrize("use_liger_kernel", [False, True])
def test_bf16_equal_weights_match_stock_on_cuda(tmp_path, tokenizer, use_liger_kernel):
    """Same first-step loss as stock SFTTrainer in bf16 (to bf16 tolerance), with and without Liger's kernels."""
    if use_liger_kernel:
        pytest.importorskip("liger_kernel", reason="use_liger_kernel needs liger-kernel")
    data = helpers.dataset(8)
    stock = SFTTrainer(
        model=helpers.model(tokenizer),
        args=gpu_config(SFTConfig, tmp_path / "stock", max_steps=1, use_liger_kernel=use_liger_kernel),
        train_dataset=data,
        processing_class=tokenizer,
    )
    ours = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=gpu_config(ScaleSFTConfig, tmp_path / "ours", max_steps=1, use_liger_kernel=use_liger_kernel, **EQUAL),
        train_dataset=data,
        processing_class=tokenizer,
    )
    (stock_row,), (ours_row,) = train_logs(stock), train_logs(ours)
    assert ours_row["loss"] == pytest.approx(stock_row["loss"], rel=1e-2)
    assert ours_row["grad_norm"] == pytest.approx(stock_row["grad_norm"], rel=5e-2)


def test_use_liger_kernel_swaps_layer_kernels_and_scale_still_computes_the_loss(tmp_path, tokenizer):
    pytest.importorskip("liger_kernel", reason="use_liger_kernel needs liger-kernel")
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=gpu_config(ScaleSFTConfig, tmp_path, max_steps=3, use_liger_kernel=True),
        train_dataset=helpers.dataset(12),
        processing_class=tokenizer,
    )
    rows = train_logs(trainer)
    # Liger's RMSNorm/SwiGLU kernels are in (transformers applies them when training starts), its fused linear
    # cross-entropy is not (TRL turns it off: it would replace the forward that returns SCALe's per-token losses)
    assert "LigerRMSNorm" in repr(trainer.model)
    assert trainer.args.liger_kernel_config["fused_linear_cross_entropy"] is False
    assert_scale_ran(rows, 3)
