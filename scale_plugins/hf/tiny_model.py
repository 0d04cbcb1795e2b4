"""A tiny randomly initialised text model for a tokenizer: the demo, the from-scratch study and the tests train it
on CPU in seconds. ``scale_plugins.testing`` re-exports :func:`tiny_causal_lm`."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

__all__ = ["tiny_causal_lm"]


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> Qwen2ForCausalLM:
    """A randomly initialised ``Qwen2ForCausalLM`` sized for ``tokenizer`` (float32, CPU).

    Embedding rows = ``len(tokenizer)`` rounded up to a multiple of 64 (as real
    checkpoints pad their vocabularies). Tied embeddings, 4 query / 2 key-value heads,
    no dropout (train and eval mode compute the same function), SDPA attention.
    Initialisation uses ``seed`` without touching the global RNG state.
    """
    if hidden_size % 8:
        raise ValueError(f"hidden_size must be a multiple of 8, got {hidden_size}")
    vocab_size = -(-len(tokenizer) // 64) * 64
    head_dim: dict[str, Any] = {"head_dim": hidden_size // 4}  # a Qwen2Config field older signatures do not declare
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        **head_dim,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    torch.nn.Module.to(model, torch.float32)  # in place; nothing of PreTrainedModel.to's quantization checks applies
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
