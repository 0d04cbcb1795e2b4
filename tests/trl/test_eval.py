"""Evaluation metrics that mean what they say: independent of the eval batch size, the number of ranks (see
test_contract.py, the two-process eval) and the training progress; eval_loss is the stock trainer's."""

from __future__ import annotations

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers

KEYS = ("eval_scale/think_loss", "eval_scale/answer_loss", "eval_scale/ce")


def _trainer(tmp_path, tokenizer, cls=ScaleSFTTrainer, config=ScaleSFTConfig, eval_data=None, **kwargs):
    # the eval set is given at construction: every TRL version (0.24 too) prepares it there
    return cls(
        model=helpers.model(tokenizer),
        args=helpers.config(config, tmp_path, **kwargs),
        train_dataset=helpers.dataset(8),
        eval_dataset=eval_data,
        processing_class=tokenizer,
    )


def _reference(trainer, data) -> dict[str, float]:
    """Explicit loops over the eval set, one sample at a time: segment means and the token-mean CE."""
    model = trainer.model.eval()
    collator = trainer.data_collator
    dataset = trainer.eval_dataset  # tokenized by the trainer
    per_sample = {1: [], 2: []}
    per_token = {1: [], 2: [], "all": []}
    for row in dataset:
        batch = collator([row])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits[0, :-1]
        targets = batch["labels"][0, 1:]
        ce = torch.nn.functional.cross_entropy(logits.float(), targets.clamp(min=0), reduction="none")
        segments = trainer.scale_tagger.tag(batch["labels"]).segment_ids[0, :-1]
        per_token["all"] += ce[targets != -100].tolist()
        for k in (1, 2):
            if (segments == k).any():
                per_sample[k].append(ce[segments == k].mean().item())
                per_token[k] += ce[segments == k].tolist()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "sample": {"eval_scale/think_loss": mean(per_sample[1]), "eval_scale/answer_loss": mean(per_sample[2])},
        "token": {"eval_scale/think_loss": mean(per_token[1]), "eval_scale/answer_loss": mean(per_token[2])},
        "ce": mean(per_token["all"]),
    }


@pytest.mark.parametrize("normalization", ["sample", "token"])
def test_eval_metrics_do_not_depend_on_batch_size_or_progress(tmp_path, tokenizer, normalization):
    data = helpers.dataset(7, seed=3)
    results = []
    for batch_size in (1, 3, 7):
        trainer = _trainer(
            tmp_path / str(batch_size),
            tokenizer,
            eval_data=data,
            per_device_eval_batch_size=batch_size,
            scale_normalization=normalization,
        )
        results.append(trainer.evaluate())
    trainer.state.global_step, trainer.state.max_steps = 9, 10  # late in training: answer-heavy weights
    results.append(trainer.evaluate())
    reference = _reference(trainer, data)
    for metrics in results:
        for key in KEYS:
            want = reference["ce"] if key == "eval_scale/ce" else reference[normalization][key]
            assert metrics[key] == pytest.approx(want, rel=1e-5), (key, metrics)
        assert metrics["eval_scale/think_tokens"] == results[0]["eval_scale/think_tokens"]


def test_eval_loss_is_the_stock_eval_loss(tmp_path, tokenizer):
    """eval_loss is the plain CE the stock trainer reports, at any point of the schedule."""
    data = helpers.dataset(6, seed=4)
    stock = _trainer(
        tmp_path / "a", tokenizer, cls=SFTTrainer, config=SFTConfig, eval_data=data, per_device_eval_batch_size=2
    )
    ours = _trainer(tmp_path / "b", tokenizer, eval_data=data, per_device_eval_batch_size=2)
    want = stock.evaluate()["eval_loss"]
    assert ours.evaluate()["eval_loss"] == pytest.approx(want, rel=1e-5)
    ours.state.global_step, ours.state.max_steps = 9, 10
    assert ours.evaluate()["eval_loss"] == pytest.approx(want, rel=1e-5)


def test_best_checkpoint_metric_is_usable(tmp_path, tokenizer):
    """metric_for_best_model can name the SCALe eval metrics (documented in docs/trl.md)."""
    trainer = ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(
            ScaleSFTConfig,
            tmp_path,
            max_steps=4,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            load_best_model_at_end=True,
            metric_for_best_model="scale/answer_loss",
            greater_is_better=False,
        ),
        train_dataset=helpers.dataset(16),
        eval_dataset=helpers.dataset(4, seed=5),
        processing_class=tokenizer,
    )
    trainer.train()
    evals = [r for r in trainer.state.log_history if "eval_scale/answer_loss" in r]
    assert len(evals) == 2
    best = min(evals, key=lambda r: r["eval_scale/answer_loss"])
    assert trainer.state.best_metric == pytest.approx(best["eval_scale/answer_loss"])
