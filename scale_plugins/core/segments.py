"""Segment tagging: which supervised token is think, answer, or an extra segment.

Tags are matched on the *bytes* the tokens decode to, not on token ids, so the same
code is right for tags that are one special token (Qwen3's ``<think>``) and for tags
that split into several BPE / SentencePiece pieces merged with neighbouring text
(``" <th" "ink" ">\\n"``). A token belongs to a span if any of its bytes does.

Only supervised tokens (label != ignore index) are read, one contiguous run at a
time inside one sample, so tags in the masked prompt, the next packed sample or the
next assistant turn never open or close a span here.

Rules (docs/concepts.md):
- think = from the start of the opener through the end of its closer;
- a token holding bytes of several segments (BPE merges across a tag) goes by its
  non-whitespace bytes, answer text first, then an extra segment, then think:
  ``'>B'`` after ``</think>`` (the Qwen2.5 BPE glues an answer letter to the closer) is
  answer, ``'>\\n\\n'`` is think, ``'.</'`` is think;
- with ``think_close_segment="answer"`` the closer's bytes are answer (the decision to end the
  trace is trained with the answer's weight, and counted in the answer's mean); a token that
  merges trace text with the closer (``'.</'``) then goes to the answer, by the rule above;
- an empty think block (only whitespace between the tags) is left out of the loss with
  ``empty_think="ignore"`` (the default), trained as think with ``"think"``;
- an opener with no closer (truncation) makes the rest of the run think;
- a closer with no opener (the template put the opener in the prompt) makes the
  text before it in the run (since the previous span) think;
- extra segments are found the same way (without the orphan-closer rule) and take
  their tokens from whatever encloses them;
- every other supervised token is answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .options import ScaleOptions

IGNORED = 0
THINK = 1
ANSWER = 2
FIRST_EXTRA = 3


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte <-> printable-unicode map used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _decoder_kinds(node: Any) -> set[str]:
    if isinstance(node, dict):
        kinds = {str(node.get("type", ""))}
        for value in node.values():
            kinds |= _decoder_kinds(value)
        return kinds
    if isinstance(node, list):
        return set().union(*(_decoder_kinds(v) for v in node)) if node else set()
    return set()


def _byte_level_piece(token: str) -> bytes:
    try:
        return bytes(_UNICODE_TO_BYTE[c] for c in token)
    except KeyError:  # not a byte-level piece after all (e.g. an added token's literal text)
        return token.encode("utf-8")


def _sentencepiece_piece(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace("\u2581", " ").encode("utf-8")


class TokenTable:
    """The bytes each token id stands for, built once per tokenizer."""

    def __init__(self, pieces: Sequence[bytes]):
        self.pieces: list[bytes] = list(pieces)
        self.lengths = np.fromiter((len(p) for p in self.pieces), dtype=np.int64, count=len(self.pieces))

    def __len__(self) -> int:
        return len(self.pieces)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenTable:
        """Works with any Hugging Face tokenizer (fast or slow); duck-typed, imports nothing.

        Byte-level BPE (GPT-2, Qwen, Llama-3) and SentencePiece-style vocabularies
        (Mistral, Gemma, Llama-2: ``\u2581`` spaces, ``<0xNN>`` byte fallback) are read
        exactly from their pieces; anything else falls back to decoding one id at a time.
        """
        size = len(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
        kinds: set[str] = set()
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            kinds = _decoder_kinds(json.loads(backend.to_str()).get("decoder"))
        if "ByteLevel" in kinds:
            convert = _byte_level_piece
        elif kinds & {"Metaspace", "ByteFallback", "Replace"} or (
            backend is None and any("\u2581" in (t or "") for t in tokens[:2000])
        ):
            convert = _sentencepiece_piece
        else:
            convert = None
        added = {int(i): tok.content for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        pieces: list[bytes] = []
        for token_id, token in enumerate(tokens):
            if token_id in added:
                pieces.append(added[token_id].encode("utf-8"))
            elif token is None:
                pieces.append(b"")
            elif convert is not None:
                pieces.append(convert(token))
            else:
                pieces.append(tokenizer.decode([token_id]).encode("utf-8"))
        return cls(pieces)

    def ensure_size(self, size: int) -> None:
        """Models often have more embedding rows than tokenizer entries; those ids decode to nothing."""
        if size > len(self.pieces):
            extra = size - len(self.pieces)
            self.pieces.extend([b""] * extra)
            self.lengths = np.concatenate([self.lengths, np.zeros(extra, dtype=np.int64)])


@dataclass
class SegmentBatch:
    """Per-token segment and sample ids, aligned with the loss targets.

    ``segment_ids``: 0 ignored, 1 think, 2 answer, 3.. the extra segments in option order.
    ``sample_ids``: which sample (0..num_samples-1 within this micro-batch) a token belongs to.
    """

    segment_ids: torch.Tensor
    sample_ids: torch.Tensor
    num_samples: int

    def to(self, device: torch.device | str) -> SegmentBatch:
        return SegmentBatch(self.segment_ids.to(device), self.sample_ids.to(device), self.num_samples)


def sample_ids_from(
    shape: tuple[int, int],
    position_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample id per position: a new sample starts at each row, each ``position_ids == 0``
    (packed rows) and each ``cu_seqlens`` offset (flattened rows)."""
    rows, cols = shape
    starts = torch.zeros(shape, dtype=torch.bool)
    starts[:, 0] = True
    if position_ids is not None:
        pos = _text_positions(position_ids, rows)
        if pos.shape[0] == 1 and rows > 1:
            pos = pos.expand(rows, -1)
        pos = pos[:, :cols]
        if position_ids.dim() == 3 and position_ids.shape[0] == 3:
            # M-RoPE temporal plane: an image keeps one temporal position for all its tokens (0 when the sample
            # starts with an image), so a sample starts where the position drops to 0, not at every 0.
            previous = torch.cat([torch.ones_like(pos[:, :1]), pos[:, :-1]], dim=1)
            starts |= (pos == 0) & (previous != 0)
        else:
            starts |= pos == 0
    if cu_seqlens is not None:
        flat = starts.view(-1)
        offsets = cu_seqlens.detach().cpu().long()
        offsets = offsets[(offsets >= 0) & (offsets < flat.numel())]
        flat[offsets] = True
    return torch.cumsum(starts.view(-1).long(), 0).view(shape) - 1


def _text_positions(position_ids: torch.Tensor, rows: int) -> torch.Tensor:
    """[B, T] positions from [B, T], [T] or multimodal RoPE position ids.

    Qwen2-VL-style models take M-RoPE ids [3, B, T] (temporal, height, width) or [4, B, T] (the text
    positions first, then the three M-RoPE planes); the first plane is the one that restarts per sample.
    """
    pos = position_ids.detach().cpu()
    if pos.dim() == 3:
        if pos.shape[0] not in (3, 4) or pos.shape[1] not in (1, rows):
            raise ValueError(
                f"position_ids of shape {tuple(pos.shape)}: expected [B, T], or [3, B, T] / [4, B, T] "
                f"(multimodal RoPE) with B = {rows}"
            )
        return pos[0]
    return pos.reshape(-1, pos.shape[-1])


@dataclass(frozen=True)
class _Span:
    start: int  # byte offsets of the whole span, tags included
    stop: int
    empty: bool  # nothing but whitespace between the tags
    closed: bool = True  # the span ends with its closer (False: truncated, think to the end of the run)


def _find_spans(data: bytes, open_tag: bytes, close_tag: bytes, orphan_close: bool) -> list[_Span]:
    spans = []
    pos = 0
    while True:
        o = data.find(open_tag, pos)
        c = data.find(close_tag, pos) if orphan_close else -1
        if c != -1 and (o == -1 or c < o):
            # closer with no opener: think since the last span
            spans.append(_Span(pos, c + len(close_tag), not data[pos:c].strip()))
            pos = c + len(close_tag)
            continue
        if o == -1:
            return spans
        c = data.find(close_tag, o + len(open_tag))
        if c == -1:  # truncated: think to the end
            spans.append(_Span(o, len(data), not data[o + len(open_tag) :].strip(), closed=False))
            return spans
        spans.append(_Span(o, c + len(close_tag), not data[o + len(open_tag) : c].strip()))
        pos = c + len(close_tag)


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True
_EMPTY_THINK = -1  # bytes of an empty think block left out of the loss


def _score(byte_segment: np.ndarray) -> np.ndarray:
    """When one token holds bytes of several segments: answer text wins over an extra segment, which wins over
    think, which wins over an ignored empty think block (the score's rank); ties go to the larger segment id."""
    rank = np.select([byte_segment == ANSWER, byte_segment >= FIRST_EXTRA, byte_segment == THINK], [3, 2, 1], default=0)
    return rank * 1024 + np.maximum(byte_segment, 0)


def _token_segments(data: bytes, byte_segment: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Segment of each token of a run from the segments of its bytes: its non-whitespace bytes decide (all of
    them if it is all whitespace), by the priority of :func:`_score`."""
    out = np.full(len(lengths), ANSWER, dtype=np.int64)  # a token with no bytes (an id the tokenizer lacks)
    nonempty = lengths > 0
    if not nonempty.any():
        return out
    score = _score(byte_segment)
    text_score = np.where(_WHITESPACE[np.frombuffer(data, dtype=np.uint8)], -1, score)
    first_byte = (np.cumsum(lengths) - lengths)[nonempty]
    best_text = np.maximum.reduceat(text_score, first_byte)
    best = np.where(best_text >= 0, best_text, np.maximum.reduceat(score, first_byte))
    out[nonempty] = np.where(best < 1024, _EMPTY_THINK, best % 1024)
    return out


class SegmentTagger:
    """Turns a batch of targets into a :class:`SegmentBatch`.

    Vectorised where it matters: run detection and segment assignment are tensor ops;
    tag search is one C-level ``bytes.find`` scan per supervised run.
    """

    def __init__(self, table: TokenTable, options: ScaleOptions):
        self.table = table
        self.options = options
        tags = [(options.think_open, options.think_close, THINK, True)]
        tags += [(e.open_tag, e.close_tag, FIRST_EXTRA + i, False) for i, e in enumerate(options.extra_segments)]
        self._tags = [(o.encode("utf-8"), c.encode("utf-8"), seg, orphan) for o, c, seg, orphan in tags]
        self.empty_think_blocks = 0  # empty think blocks left out of the loss so far (empty_think="ignore")
        self._close_as_answer = options.think_close_segment == "answer"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, options: ScaleOptions) -> SegmentTagger:
        return cls(TokenTable.from_tokenizer(tokenizer), options)

    def tag(
        self,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        shift: bool = True,
    ) -> SegmentBatch:
        """Tag a batch.

        ``labels`` [B, T] as the model receives them (ignored positions = ignore index).
        With ``shift=True`` (causal LMs) the result is aligned with ``labels[:, 1:]``
        padded by one ignored column, i.e. with the token each position predicts.
        """
        if labels.dim() == 1:
            labels = labels.unsqueeze(0)
        labels = labels.detach().cpu()
        sample_ids = sample_ids_from(tuple(labels.shape), position_ids, cu_seqlens)
        if shift:
            pad_label = torch.full_like(labels[:, :1], self.options.ignore_index)
            labels = torch.cat([labels[:, 1:], pad_label], dim=1)
            sample_ids = torch.cat([sample_ids[:, 1:], sample_ids[:, -1:]], dim=1)
        segment_ids = self.tag_targets(labels, sample_ids)
        num_samples = int(sample_ids.max().item()) + 1 if sample_ids.numel() else 0
        return SegmentBatch(segment_ids, sample_ids, num_samples)

    def tag_shifted(
        self,
        shift_labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> SegmentBatch:
        """Tag pre-shifted labels (``shift_labels[:, t]`` is predicted at position t, as under context
        parallelism); sample boundaries still come from the unshifted ``position_ids`` / ``cu_seqlens``."""
        if shift_labels.dim() == 1:
            shift_labels = shift_labels.unsqueeze(0)
        targets = shift_labels.detach().cpu()
        sample_ids = sample_ids_from(tuple(targets.shape), position_ids, cu_seqlens)
        sample_ids = torch.cat([sample_ids[:, 1:], sample_ids[:, -1:]], dim=1)
        segment_ids = self.tag_targets(targets, sample_ids)
        return SegmentBatch(segment_ids, sample_ids, int(sample_ids.max().item()) + 1 if sample_ids.numel() else 0)

    def tag_targets(self, targets: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
        """Segment id per target token (already aligned), given the sample id per token."""
        flat = targets.reshape(-1)
        flat_samples = sample_ids.reshape(-1)
        supervised = flat != self.options.ignore_index
        segment_ids = torch.where(supervised, ANSWER, IGNORED).to(torch.int64)
        if not bool(supervised.any()):
            return segment_ids.view_as(targets)
        if int(flat.max()) >= len(self.table):
            self.table.ensure_size(int(flat.max()) + 1)
        # Runs: maximal stretches of supervised tokens inside one sample.
        linked = torch.zeros_like(supervised)  # linked[t]: t continues the run of t - 1
        linked[1:] = supervised[:-1] & supervised[1:] & (flat_samples[1:] == flat_samples[:-1])
        continues = torch.zeros_like(supervised)
        continues[:-1] = linked[1:]
        starts = torch.nonzero(supervised & ~linked).view(-1).tolist()
        ends = (torch.nonzero(supervised & ~continues).view(-1) + 1).tolist()
        ids = flat.tolist()
        pieces = self.table.pieces
        seg = segment_ids.numpy()
        for start, end in zip(starts, ends):
            data = b"".join([pieces[i] for i in ids[start:end]])
            found = [(o, c, s, orphan) for o, c, s, orphan in self._tags if o in data or (orphan and c in data)]
            if not found:
                continue
            byte_segment = np.full(len(data), ANSWER, dtype=np.int64)
            for open_tag, close_tag, segment, orphan in found:
                for span in _find_spans(data, open_tag, close_tag, orphan):
                    empty = segment == THINK and span.empty and self.options.empty_think == "ignore"
                    byte_segment[span.start : span.stop] = _EMPTY_THINK if empty else segment
                    self.empty_think_blocks += int(empty)
                    if segment == THINK and span.closed and not empty and self._close_as_answer:
                        byte_segment[span.stop - len(close_tag) : span.stop] = ANSWER
            run_segments = _token_segments(data, byte_segment, self.table.lengths[flat[start:end].numpy()])
            seg[start:end] = np.where(run_segments == _EMPTY_THINK, IGNORED, run_segments)
        return segment_ids.view_as(targets)
