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
- with ``think_close_segment="own"`` the closer's bytes are a segment of their own (``close``, id
  :func:`close_segment_id`, after the extra segments); it ranks just below answer text, so ``'.</'``
  is close and ``'>B'`` is still answer;
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
from typing import Any, NamedTuple

import numpy as np
import torch

from .options import ScaleOptions

IGNORED = 0
THINK = 1
ANSWER = 2
FIRST_EXTRA = 3


def close_segment_id(options: ScaleOptions) -> int | None:
    """Segment id of the closing tag's own segment (``think_close_segment="own"``: after the extra segments,
    as in :attr:`ScaleOptions.segment_names`), ``None`` with any other setting."""
    return FIRST_EXTRA + len(options.extra_segments) if options.think_close_segment == "own" else None


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
        # every piece in one buffer, for joining many tokens' bytes with a numpy gather (:meth:`join`)
        self._blob = np.frombuffer(b"".join(self.pieces), dtype=np.uint8)
        self._offsets = np.cumsum(self.lengths) - self.lengths

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
            self._offsets = np.concatenate([self._offsets, np.full(extra, len(self._blob), dtype=np.int64)])

    def join(self, ids: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
        """The bytes of the tokens ``ids`` (an int64 array) one after another, with each token's byte length and
        first byte in them: ``b"".join(pieces[i] for i in ids)`` as one gather."""
        lengths = self.lengths[ids]
        ends = np.cumsum(lengths)
        starts = ends - lengths
        index = np.repeat(self._offsets[ids] - starts, lengths)
        index += np.arange(len(index))
        return self._blob[index].tobytes(), lengths, starts


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


class _Span(NamedTuple):
    start: int  # byte offsets of the whole span, tags included
    stop: int
    empty: bool  # nothing but whitespace between the tags
    closed: bool = True  # the span ends with its closer (False: truncated, think to the end of the run)


def _find_spans(data: bytes, lo: int, hi: int, open_tag: bytes, close_tag: bytes, orphan_close: bool) -> list[_Span]:
    """The spans of one tag pair in ``data[lo:hi]`` (one supervised run), as offsets into ``data``."""
    spans: list[_Span] = []
    find = data.find
    pos = lo
    while True:
        o = find(open_tag, pos, hi)
        c = find(close_tag, pos, hi) if orphan_close else -1
        if c != -1 and (o == -1 or c < o):
            # closer with no opener: think since the last span
            spans.append(_Span(pos, c + len(close_tag), not data[pos:c].strip()))
            pos = c + len(close_tag)
            continue
        if o == -1:
            return spans
        c = find(close_tag, o + len(open_tag), hi)
        if c == -1:  # truncated: think to the end
            spans.append(_Span(o, hi, not data[o + len(open_tag) : hi].strip(), closed=False))
            return spans
        spans.append(_Span(o, c + len(close_tag), not data[o + len(open_tag) : c].strip()))
        pos = c + len(close_tag)


def _occurrences(data: bytes, tag: bytes, run_lo: np.ndarray, run_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``tag`` starts in ``data`` (overlapping matches too), keeping the matches that lie inside one run, and
    the index of that run (``run_lo`` ascending)."""
    found = []
    find = data.find
    at = find(tag)
    while at != -1:
        found.append(at)
        at = find(tag, at + 1)
    starts = np.array(found, dtype=np.int64)
    runs = np.searchsorted(run_lo, starts, side="right") - 1
    inside = starts + len(tag) <= run_hi[runs]
    return starts[inside], runs[inside]


def _all_spans(
    data: bytes,
    run_lo: np.ndarray,
    run_hi: np.ndarray,
    text_before: np.ndarray,
    open_tag: bytes,
    close_tag: bytes,
    orphan_close: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The spans of one tag pair in every run ``data[run_lo[r]:run_hi[r]]``: the spans :func:`_find_spans` finds
    run by run, as arrays (start, stop, empty, closed), in no particular order.

    A run with at most one opener and one closer, not overlapping (nearly every run), is read with array
    operations; any other run goes through :func:`_find_spans`. ``text_before[i]``: how many non-whitespace bytes
    ``data[:i]`` holds (so a span is empty when its content adds none).
    """
    runs = len(run_lo)
    opens, open_run = _occurrences(data, open_tag, run_lo, run_hi)
    closes, close_run = _occurrences(data, close_tag, run_lo, run_hi)
    o = np.full(runs, -1, dtype=np.int64)
    o[open_run] = opens
    c = np.full(runs, -1, dtype=np.int64)
    c[close_run] = closes
    both = (o >= 0) & (c >= 0)
    irregular = (np.bincount(open_run, minlength=runs) > 1) | (np.bincount(close_run, minlength=runs) > 1)
    irregular |= both & (o < c + len(close_tag)) & (c < o + len(open_tag))  # the two tags share bytes
    has_open, has_close = (o >= 0) & ~irregular, (c >= 0) & ~irregular
    block = has_open & has_close & (o < c)  # opener ... closer
    orphan = has_close & ((o < 0) | (c < o)) if orphan_close else np.zeros(runs, dtype=bool)  # run start ... closer
    cut = has_open & ((c < 0) | (c < o))  # opener ... end of the run (no closer after it)
    # (start, stop, content start, content stop, closed) of each kind
    kinds = [
        (o[block], c[block] + len(close_tag), o[block] + len(open_tag), c[block], True),
        (run_lo[orphan], c[orphan] + len(close_tag), run_lo[orphan], c[orphan], True),
        (o[cut], run_hi[cut], o[cut] + len(open_tag), run_hi[cut], False),
    ]
    start = np.concatenate([k[0] for k in kinds])
    stop = np.concatenate([k[1] for k in kinds])
    empty = np.concatenate([text_before[k[3]] == text_before[k[2]] for k in kinds])
    closed = np.concatenate([np.full(len(k[0]), k[4]) for k in kinds])
    rest = [
        span
        for r in np.flatnonzero(irregular).tolist()
        for span in _find_spans(data, int(run_lo[r]), int(run_hi[r]), open_tag, close_tag, orphan_close)
    ]
    if rest:
        start = np.concatenate([start, [s.start for s in rest]]).astype(np.int64)
        stop = np.concatenate([stop, [s.stop for s in rest]]).astype(np.int64)
        empty = np.concatenate([empty, [s.empty for s in rest]]).astype(bool)
        closed = np.concatenate([closed, [s.closed for s in rest]]).astype(bool)
    return start, stop, empty, closed


_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.strip() strips
_EMPTY_THINK = -1  # bytes of an empty think block left out of the loss


class SegmentTagger:
    """Turns a batch of targets into a :class:`SegmentBatch`.

    Work is per batch, not per run or per token (a Python loop per run cost more than the rest): the
    supervised tokens' bytes are gathered into one buffer (:meth:`TokenTable.join`), each tag is found there
    with C-level ``bytes.find``, runs holding one opener and one closer get their spans from array operations
    (:func:`_all_spans`; any other run goes through :func:`_find_spans`), the spans are painted onto one array
    of byte ranks, and every token's segment comes out of one ``np.maximum.reduceat`` over its bytes
    (:meth:`_rank_tables`).
    """

    def __init__(self, table: TokenTable, options: ScaleOptions):
        self.table = table
        self.options = options
        tags = [(options.think_open, options.think_close, THINK, True)]
        tags += [(e.open_tag, e.close_tag, FIRST_EXTRA + i, False) for i, e in enumerate(options.extra_segments)]
        self._tags = [(o.encode("utf-8"), c.encode("utf-8"), seg, orphan) for o, c, seg, orphan in tags]
        self.empty_think_blocks = 0  # empty think blocks left out of the loss so far (empty_think="ignore")
        own = close_segment_id(options)
        # the segment a closed block's closer is painted with, when it is not think
        self._closer_segment = ANSWER if options.think_close_segment == "answer" else own
        self._rank, self._text_bonus, self._segment_of_key, self._rank_dtype = self._rank_tables(len(tags) - 1, own)

    @staticmethod
    def _rank_tables(extras: int, close: int | None = None) -> tuple[dict[int, int], np.ndarray, np.ndarray, type]:
        """Byte ranks and how a token's segment is read from them.

        A token holding bytes of several segments goes by its non-whitespace bytes (all of them if it is all
        whitespace): answer text wins over the closer's own segment (``close``, when there is one), which wins over
        an extra segment (the later one first), which wins over think, which
        wins over an ignored empty think block (:data:`_EMPTY_THINK`). Returns ``rank`` (segment -> its place
        in that order, 0 .. n - 1), ``bonus`` (byte value -> n for a non-whitespace byte, 0 for whitespace),
        ``decode`` (key -> segment id, for keys 0 .. 2n - 1) and the dtype they fit in. A byte's key is its
        segment's rank plus its bonus, so a token's largest key is its best non-whitespace byte when it has one
        and its best byte otherwise.
        """
        order = [_EMPTY_THINK, THINK, *range(FIRST_EXTRA, FIRST_EXTRA + extras), *([close] if close else []), ANSWER]
        rank = {segment: r for r, segment in enumerate(order)}
        n = len(order)
        dtype = np.int8 if 2 * n <= 127 else np.int32
        bonus = np.full(256, n, dtype=dtype)
        bonus[list(_WHITESPACE)] = 0
        decode = np.array([IGNORED if s == _EMPTY_THINK else s for s in order] * 2, dtype=np.int64)
        return rank, bonus, decode, dtype

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
        supervised = flat != self.options.ignore_index
        segment_ids = torch.where(supervised, ANSWER, IGNORED).to(torch.int64)
        where = torch.nonzero(supervised).view(-1)  # the supervised positions, in order
        if not where.numel():
            return segment_ids.view_as(targets)
        ids = flat[where].numpy()
        top = int(ids.max())
        if top >= len(self.table):
            self.table.ensure_size(top + 1)
        # Runs: maximal stretches of supervised tokens inside one sample. A supervised token starts one unless it
        # follows the previous supervised token directly, in the same sample.
        samples = sample_ids.reshape(-1)[where]
        breaks = torch.ones_like(where, dtype=torch.bool)
        breaks[1:] = (where[1:] != where[:-1] + 1) | (samples[1:] != samples[:-1])
        run_first = torch.nonzero(breaks).view(-1).numpy()
        # The bytes of all supervised tokens, joined once; each run is a byte range of it.
        data, lengths, token_start = self.table.join(ids)
        tags = [t for t in self._tags if t[0] in data or (t[3] and t[1] in data)]
        if not tags:  # no tag anywhere: every supervised token is answer
            return segment_ids.view_as(targets)
        run_lo = token_start[run_first]
        run_hi = np.append(run_lo[1:], len(data))
        text_bonus = self._text_bonus.take(np.frombuffer(data, dtype=np.uint8))  # > 0: not whitespace
        text_before = np.zeros(len(data) + 1, dtype=np.int64)
        np.cumsum(text_bonus != 0, out=text_before[1:])
        rank = self._rank
        ranks = np.full(len(data), rank[ANSWER], dtype=self._rank_dtype)  # priority rank of each byte
        for open_tag, close_tag, segment, orphan in tags:  # in order: an extra segment overwrites think
            start, stop, empty, closed = _all_spans(data, run_lo, run_hi, text_before, open_tag, close_tag, orphan)
            left_out = empty if segment == THINK and self.options.empty_think == "ignore" else np.zeros_like(empty)
            self.empty_think_blocks += int(left_out.sum())
            values = np.where(left_out, rank[_EMPTY_THINK], rank[segment])
            for a, b, value in zip(start.tolist(), stop.tolist(), values.tolist()):  # a tag's spans are disjoint
                ranks[a:b] = value
            if segment == THINK and self._closer_segment is not None:
                for b in stop[closed & ~left_out].tolist():
                    ranks[b - len(close_tag) : b] = rank[self._closer_segment]
        # Each token's segment: the largest key (rank + a bonus for non-whitespace) over its bytes.
        keys = ranks + text_bonus
        nonempty = lengths > 0  # a token with no bytes (an id the tokenizer lacks) stays answer
        if nonempty.all():
            tagged = self._segment_of_key.take(np.maximum.reduceat(keys, token_start))
        else:
            tagged = np.full(len(ids), ANSWER, dtype=np.int64)
            tagged[nonempty] = self._segment_of_key.take(np.maximum.reduceat(keys, token_start[nonempty]))
        segment_ids.numpy()[where.numpy()] = tagged
        return segment_ids.view_as(targets)
