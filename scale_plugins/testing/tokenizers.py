"""A small SentencePiece BPE trained offline and wrapped like Llama/Mistral tokenizers (test-only).

:func:`sentencepiece_tokenizer`: byte fallback, ``▁`` spaces; tags become pieces glued to a space or split:
``"x<think>"`` -> ``▁x | < | think>``, ``" </think>"`` -> ``▁</ | think>``, ``" <think>"`` -> ``▁<think>``.
The real Qwen BPE and the small byte-level BPE the commands use live in :mod:`scale_plugins.hf.offline_tokenizers`
(re-exported by ``scale_plugins.testing``).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from transformers import LlamaTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from ..hf.offline_tokenizers import CHATML_TEMPLATE

__all__ = ["sentencepiece_tokenizer"]

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
