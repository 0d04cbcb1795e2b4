"""MoE models: the router (load-balancing) loss is kept exactly as the stock trainer adds it.

The model never gets labels from SCALe, so it never adds ``router_aux_loss_coef * aux_loss`` itself: SCALe adds it,
scaled as the host's stock loss scales it (TRL >= 1.16 its own way, transformers' Trainer its way).
"""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers
from .test_trainer import EQUAL, assert_same_grads, one_step


def tiny_mixtral(tokenizer, coef: float = 0.5, seed: int = 0):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        router_aux_loss_coef=coef,
        output_router_logits=True,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=False,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MixtralForCausalLM(config).float()


@pytest.mark.parametrize("ga", [1, 2])
def test_equal_weights_keep_the_router_loss_like_stock(tmp_path, tokenizer, ga):
    data = helpers.dataset(8)
    common = dict(per_device_train_batch_size=8 // ga, gradient_accumulation_steps=ga)
    stock = SFTTrainer(
        model=tiny_mixtral(tokenizer),
        args=helpers.config(SFTConfig, tmp_path / "a", **common),
        train_dataset=data,
        processing_class=tokenizer,
    )
    ours = ScaleSFTTrainer(
        model=tiny_mixtral(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path / "b", **common, **EQUAL),
        train_dataset=data,
        processing_class=tokenizer,
    )
    loss_a, grads_a = one_step(stock, ga)
    loss_b, grads_b = one_step(ours, ga)
    # the router loss is there: without it the loss is the CE alone (measured 6.27 vs 7.27 on TRL 1.16)
    # off in the model config and, where TRL has the field (it overrides the model's), in the training config
    off = {"router_aux_loss_coef": 0.0} if "router_aux_loss_coef" in {f.name for f in fields(SFTConfig)} else {}
    without = ScaleSFTTrainer(
        model=tiny_mixtral(tokenizer, coef=0.0),
        args=helpers.config(ScaleSFTConfig, tmp_path / "c", **common, **EQUAL, **off),
        train_dataset=data,
        processing_class=tokenizer,
    )
    loss_c, _ = one_step(without, ga)
    # the router loss is in: each TRL version writes its effective coefficient into the model config (TRL 1.16 keeps
    # the model's 0.5, TRL 1.9 sets its SFTConfig default 0.001); the load-balancing loss itself is >= 1
    coef = ours.model.config.router_aux_loss_coef
    if getattr(stock, "aux_loss_enabled", True):
        assert coef > 0 and loss_b > loss_c + 0.5 * coef, (loss_b, loss_c, coef)
    assert math.isclose(loss_a, loss_b, rel_tol=1e-5), (loss_a, loss_b)
    assert_same_grads(grads_a, grads_b, atol=1e-6, rtol=1e-4)
    # the gate weights get a gradient (from the router loss where it is on, from routing otherwise)
    assert any("gate" in name and g.abs().sum() > 0 for name, g in grads_b.items())


def test_router_loss_off_when_the_coefficient_is_zero(tmp_path, tokenizer):
    data = helpers.dataset(8)
    stock = SFTTrainer(
        model=tiny_mixtral(tokenizer, coef=0.0),
        args=helpers.config(SFTConfig, tmp_path / "a"),
        train_dataset=data,
        processing_class=tokenizer,
    )
    ours = ScaleSFTTrainer(
        model=tiny_mixtral(tokenizer, coef=0.0),
        args=helpers.config(ScaleSFTConfig, tmp_path / "b", **EQUAL),
        train_dataset=data,
        processing_class=tokenizer,
    )
    loss_a, grads_a = one_step(stock)
    loss_b, grads_b = one_step(ours)
    assert math.isclose(loss_a, loss_b, rel_tol=1e-5)
    assert_same_grads(grads_a, grads_b, atol=1e-6, rtol=1e-4)
