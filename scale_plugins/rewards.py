"""Verifiable rewards for the GRPO follow-up to SCALe-SFT.

Three reward functions with the signature that TRL's ``GRPOTrainer`` and Axolotl's ``rl: grpo`` call
(``fn(prompts=..., completions=..., completion_ids=..., **dataset_columns) -> list[float | None]``), so they can be
named by import path, e.g. ``scale_plugins.rewards.format_reward``:

* :func:`format_reward`: 1.0 iff the completion is exactly ``<think>...</think>`` then ``<answer>...</answer>``.
* :func:`accuracy_reward`: 1.0 iff the text inside the ``<answer>`` block matches the gold answer (dataset column
  ``solution`` or ``answer``): multiple-choice letter, number, math expression (via ``math_verify`` when installed)
  or normalized string.
* :func:`perception_reward`: token-level F1 between ``<perception>...</perception>`` (else the think block) and a
  gold image description (dataset column ``description``).

Completions may be plain strings or TRL's conversational form (a list of message dicts; the last assistant message
is scored; its content may be a string or a list of ``{"type": "text", "text": ...}`` parts). Any other keyword
argument (``prompts``, ``completion_ids``, ``trainer_state``, ``log_metric``, other dataset columns) is accepted and
ignored. Malformed input of any kind (``None``, numbers, dicts, empty or huge strings) scores 0.0 rather than
raising, and every pattern used here runs in linear time, so a 10 MB completion is scored in milliseconds.

A reward of ``None`` means "no gold for this row": TRL turns it into NaN and leaves the row out of that reward.

The completion must carry its own opening ``<think>``: with a chat template that pre-fills ``<think>`` in the
generation prompt, format_reward scores every completion 0.0 (accuracy_reward only reads the answer block).

This module uses only the standard library; ``math_verify`` is imported if it is installed.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["REWARD_FUNCTIONS", "accuracy_reward", "extract_answer", "format_reward", "perception_reward"]

try:  # optional: symbolic comparison of math answers
    from math_verify import parse as _mv_parse_fn
    from math_verify import verify as _mv_verify_fn
except Exception:  # ImportError, or a broken install of its own dependencies
    _MATH_VERIFY: tuple[Callable[..., Any], Callable[..., Any]] | None = None
else:
    _MATH_VERIFY = (_mv_parse_fn, _mv_verify_fn)

#: Default relative tolerance of numeric answers.
NUMERIC_REL_TOL = 1e-6
#: An ``<answer>`` block longer than this (characters, after stripping) scores 0.0: no real final answer is this
#: long, and it bounds the cost of the comparison (``math_verify`` parsing in particular).
MAX_ANSWER_CHARS = 10_000
#: A perception span (or think block used in its place) longer than this scores 0.0.
MAX_PERCEPTION_CHARS = 1_000_000
#: ``math_verify`` time limits in seconds (enforced with ``signal.alarm``, so only in the main thread).
MATH_VERIFY_TIMEOUT_S = 5

# --------------------------------------------------------------------------------------------------------------------
# Completion text and tags
# --------------------------------------------------------------------------------------------------------------------


def _content_text(content: object) -> str | None:
    """Text of a message's ``content``: a string, or the concatenated text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        pieces: list[str] = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    pieces.append(text)
        return "".join(pieces)
    return None


def _completion_text(completion: object) -> str | None:
    """The text to score: a string as is, or the content of the last assistant message; ``None`` if unusable."""
    try:
        if isinstance(completion, str):
            return completion
        if isinstance(completion, Mapping):
            completion = [completion]
        if isinstance(completion, (list, tuple)):
            for message in reversed(completion):
                # TRL's own examples omit "role"; a message without one counts as the model's.
                if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
                    return _content_text(message.get("content"))
        return None
    except Exception:  # an exotic Mapping whose .get raises: treat as garbage
        return None


def _check_completions(completions: object) -> Sequence[object]:
    if isinstance(completions, (str, bytes, Mapping)) or not isinstance(completions, Iterable):
        raise TypeError(f"completions must be a list (one entry per completion), got {type(completions).__name__}")
    return completions if isinstance(completions, Sequence) else list(completions)


class _Tag:
    """One occurrence of ``<name>`` / ``</name>`` or a malformed variant (``<Think>``, ``<answer id=1>``...)."""

    __slots__ = ("closing", "end", "exact", "name", "start")

    def __init__(self, name: str, closing: bool, exact: bool, start: int, end: int) -> None:
        self.name = name
        self.closing = closing
        self.exact = exact
        self.start = start
        self.end = end


def _ascii_case_insensitive(word: str) -> str:
    return "".join(f"[{char}{char.upper()}]" for char in word)


# ASCII-only case-insensitivity: re.IGNORECASE would also take "\u0130" for "i" and the Kelvin sign for "k".
_TAG_RES = {
    names: re.compile(r"<(/?)(" + "|".join(map(_ascii_case_insensitive, names)) + r")(?!\w)(>?)")
    for names in (("think", "answer"), ("answer",), ("think",), ("perception",))
}
_THINK_TAG_RE = _TAG_RES[("think",)]


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _tags_by_regex(text: str, names: tuple[str, ...], limit: int) -> list[_Tag]:
    """What :func:`_tags` returns, found with one regex (slower on text full of ``<``)."""
    return [
        _Tag(m.group(2).lower(), m.group(1) == "/", m.group(3) == ">" and m.group(2).islower(), m.start(), m.end())
        for _, m in zip(range(limit), _TAG_RES[names].finditer(text))
    ]


def _tags(text: str, names: tuple[str, ...], limit: int) -> list[_Tag]:
    """The first ``limit`` tags named ``names`` in ``text``, case-insensitively, in order of position.

    A tag is ``<name`` or ``</name`` not followed by a word character; it is exact when it is lower case and
    closed by ``>`` right away. Callers only need to know whether there are more than ``limit`` tags, which keeps
    the scan of a pathological completion (millions of tags) short.
    """
    lowered = text.replace("\u0130", "I").lower()  # U+0130 is the one character whose lower() is two long
    if len(lowered) != len(text):  # in case a future Unicode version adds another: the (slower) regex
        return _tags_by_regex(text, names, limit)
    found: list[_Tag] = []
    for name in names:
        for needle in ("<" + name, "</" + name):
            start, count = 0, 0
            while count < limit:  # str.find is a fast substring search, unlike a regex tried at every "<"
                index = lowered.find(needle, start)
                if index < 0:
                    break
                end = start = index + len(needle)
                if (end < len(text) and _is_word_char(text[end])) or not text[index:end].isascii():
                    continue  # "<thinking>" is not a think tag, nor is "<th\u0130nk>"
                closed = text.startswith(">", end)
                exact = closed and text.startswith(needle, index)
                found.append(_Tag(name, needle[1] == "/", exact, index, end + 1 if closed else end))
                count += 1
    found.sort(key=lambda tag: tag.start)
    return found[:limit]


def _single_block(text: str, name: str) -> tuple[str, bool] | None:
    """``(content, present)`` of the one well-formed ``<name>...</name>`` block.

    ``present`` is False (content ``""``) when there is no tag of that name at all; the result is ``None`` when
    tags are present but not exactly one exact opening tag followed by one exact closing tag.
    """
    tags = _tags(text, (name,), 3)
    if not tags:
        return "", False
    if len(tags) != 2:
        return None
    first, second = tags
    if not (first.exact and second.exact and not first.closing and second.closing):
        return None
    return text[first.end : second.start], True


# --------------------------------------------------------------------------------------------------------------------
# format_reward
# --------------------------------------------------------------------------------------------------------------------


def _format_ok(text: str) -> bool:
    tags = _tags(text, ("think", "answer"), 5)
    if len(tags) != 4 or not all(tag.exact for tag in tags):
        return False
    expected = (("think", False), ("think", True), ("answer", False), ("answer", True))
    if tuple((tag.name, tag.closing) for tag in tags) != expected:
        return False
    think_open, think_close, answer_open, answer_close = tags
    outside = (text[: think_open.start], text[think_close.end : answer_open.start], text[answer_close.end :])
    if any(part.strip() for part in outside):
        return False
    think = text[think_open.end : think_close.start]
    answer = text[answer_open.end : answer_close.start]
    return bool(think.strip()) and bool(answer.strip())


def format_reward(completions: Sequence[object], **kwargs: Any) -> list[float]:
    """1.0 per completion that is exactly one think block followed by one answer block, else 0.0.

    The completion must be ``<think>REASONING</think>`` then ``<answer>ANSWER</answer>``, with only whitespace
    before, between and after the two blocks; both blocks must contain non-whitespace text; and no other
    ``think``/``answer`` tag may appear anywhere (no nesting, no duplicates, no variants such as ``<Think>`` or
    ``<answer >``). Other tags, e.g. ``<perception>`` inside the think block, are allowed.

    Args:
        completions: One entry per completion: a string, or a list of message dicts (TRL conversational form).
        **kwargs: Ignored (``prompts``, ``completion_ids``, ``trainer_state``, dataset columns, ...).

    Returns:
        One float per completion.

    >>> format_reward(["<think>2+2 is 4.</think>\\n<answer>4</answer>", "<answer>4</answer>"])
    [1.0, 0.0]
    >>> format_reward(["<think>a <think>b</think></think><answer>4</answer>"])
    [0.0]
    >>> format_reward([[{"role": "assistant", "content": "<think>ok</think><answer>B</answer>"}]])
    [1.0]
    """
    out: list[float] = []
    for completion in _check_completions(completions):
        text = _completion_text(completion)
        out.append(1.0 if text is not None and _format_ok(text) else 0.0)
    return out


# --------------------------------------------------------------------------------------------------------------------
# accuracy_reward: normalization and matching rules
# --------------------------------------------------------------------------------------------------------------------

_ANSWER_PREFIX_RE = re.compile(
    r"^(?:so\s*,?\s*)?(?:the\s+|my\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\b\s*(?:is\b|:|=)?\s*:?\s*",
    re.IGNORECASE,
)
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname|mbox)\s*\{([^{}]*)\}")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CURRENCY_RE = re.compile(r"^[$€£¥]\s*(?=[-+]?\.?\d)")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces matched), or ``None``."""
    starts = [match.end() for match in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index]
    return None


def _clean(text: str) -> str:
    """Strip what wraps an answer: answer-is phrases, ``\\boxed{}``, ``$...$``, ``\\text{}``, a final period."""
    text = unicodedata.normalize("NFKC", text).replace("\u2212", "-").strip()
    for _ in range(3):  # wrappers can nest: "The answer is $\\boxed{4}$."
        before = text
        text = _ANSWER_PREFIX_RE.sub("", text, count=1).strip()
        boxed = _last_boxed(text)
        if boxed is not None:
            text = boxed.strip()
        text = text.rstrip(" .").strip()
        for left, right in _DELIMITERS:
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : len(text) - len(right)].strip()
                break
        if text == before:
            break
    text = _LATEX_TEXT_RE.sub(r"\1", text)
    return text.replace("\\%", "%").replace("{,}", ",").replace("\\,", "").replace("\\!", "").strip()


# --- multiple choice ------------------------------------------------------------------------------------------------

_GOLD_LETTER_RE = re.compile(r"^\(?([A-Z])\)?[.):]?$")
_BARE_LETTER_RE = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_LEADING_LETTER_RE = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.):])\s+\S")
_NAMED_LETTER_RE = re.compile(
    r"\b(?:answer|option|choice)\b\s*(?:is\b|:)?\s*:?\s*(?:\(([A-Z])\)|([A-Z])(?=\s*(?:$|[.,;:!\]])))", re.IGNORECASE
)
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")


def _choice_letter(raw: str, cleaned: str) -> str | None:
    """The option letter a prediction commits to, or ``None`` (no letter, or several: hedging)."""
    if len(set(_PAREN_LETTER_RE.findall(raw))) > 1:
        return None
    match = _BARE_LETTER_RE.match(cleaned)
    if match:
        return match.group(1).upper()
    match = _LEADING_LETTER_RE.match(cleaned)
    if match:
        return match.group(1) or match.group(2)
    letters = [letter for m in _NAMED_LETTER_RE.finditer(raw) if (letter := m.group(1) or m.group(2)).isupper()]
    return letters[-1] if letters else None


# --- numbers --------------------------------------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
_WHOLE_NUMBER_RE = re.compile(rf"^({_NUM})(?:\s*/\s*({_NUM}))?\s*(%?)$")
_LATEX_FRAC_RE = re.compile(rf"\\[dt]?frac\s*\{{\s*({_NUM})\s*\}}\s*\{{\s*({_NUM})\s*\}}")
_NUMBER_TOKEN_RE = re.compile(rf"(?<![\w.,/])(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?\s*%?(?![\w/]|[.,]\d)")


def _to_float(token: str) -> float | None:
    try:
        value = float(token.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _whole_number(text: str) -> tuple[float, bool] | None:
    """``(value, is_percent)`` when ``text`` is one number: ``1,000``, ``3.50``, ``1/2``, ``\\frac{1}{2}``, ``5%``."""
    text = _CURRENCY_RE.sub("", _LATEX_FRAC_RE.sub(r"\1/\2", text.strip()))
    match = _WHOLE_NUMBER_RE.match(text)
    if not match:
        return None
    value = _to_float(match.group(1))
    if value is None:
        return None
    if match.group(2) is not None:
        denominator = _to_float(match.group(2))
        if not denominator:
            return None
        value /= denominator
    return value, bool(match.group(3))


def _predicted_number(cleaned: str) -> tuple[float, bool] | None:
    """The number a prediction commits to: the whole answer, else what follows the last ``=``, else its only number."""
    whole = _whole_number(cleaned)
    if whole is not None:
        return whole
    if "=" in cleaned:
        after = _whole_number(_clean(cleaned.rsplit("=", 1)[1]))
        if after is not None:
            return after
    tokens = _NUMBER_TOKEN_RE.findall(_LATEX_FRAC_RE.sub(r"\1/\2", cleaned))
    return _whole_number(tokens[0]) if len(tokens) == 1 else None


def _numbers_match(gold: tuple[float, bool], pred: tuple[float, bool], rel_tol: float) -> bool:
    (gold_value, gold_pct), (pred_value, pred_pct) = gold, pred
    if math.isclose(gold_value, pred_value, rel_tol=rel_tol):
        return True
    if gold_pct != pred_pct:  # "50%" also matches "0.5"
        percent, plain = (gold_value, pred_value) if gold_pct else (pred_value, gold_value)
        return math.isclose(percent / 100.0, plain, rel_tol=rel_tol)
    return False


# --- strings --------------------------------------------------------------------------------------------------------

_KEEP_PUNCT = frozenset("()[]{}-/*%\\_")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _normalized_string(cleaned: str) -> str:
    """Case-folded, punctuation (but not brackets or math operators) replaced by spaces, one space between tokens."""
    text = cleaned.replace("$", " ").replace("\\(", " ").replace("\\)", " ").casefold()
    text = "".join(
        " " if unicodedata.category(char).startswith("P") and char not in _KEEP_PUNCT else char for char in text
    )
    return " ".join(_TOKEN_RE.findall(text))


# --- math expressions (math_verify) ---------------------------------------------------------------------------------

_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_MATH_WORDS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp lim max min mod gcd lcm sqrt pi "
    "inf infty deg".split()
)


def _looks_like_math(text: str) -> bool:
    """True for ``x^2+1``, ``\\frac{\\pi}{2}``, ``(1, 2)``; False for prose, whose words math_verify would turn into
    products of symbols (``Paris`` == ``sirap``)."""
    if not text:
        return False
    return all(word.lower() in _MATH_WORDS for word in _WORD_RE.findall(_LATEX_COMMAND_RE.sub(" ", text)))


def _has_latex_delimiters(text: str) -> bool:
    return "$" in text or "\\(" in text or "\\[" in text or "\\boxed" in text


def _math_verify_match(gold_raw: str, gold: str, pred_raw: str, pred: str) -> bool:
    """Symbolic equality by ``math_verify``, if installed; False on any parse failure, timeout or error."""
    if _MATH_VERIFY is None or not _looks_like_math(gold) or not _looks_like_math(pred):
        return False
    parse, verify = _MATH_VERIFY
    main_thread = threading.current_thread() is threading.main_thread()
    timeout = MATH_VERIFY_TIMEOUT_S if main_thread else None  # signal.alarm works in the main thread only

    def parsed(raw: str, cleaned: str) -> Any:
        return parse(raw if _has_latex_delimiters(raw) else f"${cleaned}$", parsing_timeout=timeout)

    try:
        gold_parsed = parsed(gold_raw, gold)
        pred_parsed = parsed(pred_raw, pred) if gold_parsed else None
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:
        return False


# --- putting the rules together -------------------------------------------------------------------------------------


def _gold_alternatives(gold: object) -> list[str]:
    """Usable gold strings: a string or number, or a list of acceptable ones. GSM8K ``#### 42`` and gold wrapped in
    ``<answer>`` are unwrapped."""
    items = list(gold) if isinstance(gold, (list, tuple)) else [gold]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            continue
        text = item if isinstance(item, str) else repr(item)
        block = _single_block(text, "answer")
        if block is not None and block[1]:
            text = block[0]
        elif "####" in text:
            text = text.rsplit("####", 1)[1]
        if text.strip():
            out.append(text.strip())
    return out


def _answer_matches(gold_raw: str, pred_raw: str, rel_tol: float) -> bool:
    gold = _clean(gold_raw)
    pred = _clean(pred_raw)
    if not gold or not pred:
        return False
    letter = _GOLD_LETTER_RE.match(gold)
    if letter:  # multiple choice: only the letter decides
        return _choice_letter(pred_raw, pred) == letter.group(1)
    gold_number = _whole_number(gold)
    if gold_number is not None:  # numeric gold: numbers (or an equal expression, e.g. \sqrt{4}) decide
        pred_number = _predicted_number(pred)
        if pred_number is not None and _numbers_match(gold_number, pred_number, rel_tol):
            return True
        return _math_verify_match(gold_raw, gold, pred_raw, pred)
    normalized_gold = _normalized_string(gold)
    if normalized_gold and normalized_gold == _normalized_string(pred):
        return True
    return _math_verify_match(gold_raw, gold, pred_raw, pred)


def extract_answer(text: str | None) -> str | None:
    """Content of the single well-formed ``<answer>`` block without think tags inside; ``None`` otherwise.

    What :func:`accuracy_reward` compares with the gold answer; public for evaluation scripts that score the same way.

    >>> extract_answer("<think>2 + 2 = 4</think><answer> 4 </answer>")
    '4'
    >>> extract_answer("<answer>4</answer><answer>5</answer>") is None
    True
    >>> extract_answer("no tags") is None
    True
    """
    if text is None:
        return None
    block = _single_block(text, "answer")
    if block is None or not block[1]:
        return None
    content = block[0].strip()
    if not content or len(content) > MAX_ANSWER_CHARS or _THINK_TAG_RE.search(content):
        return None
    return content


def _gold_column(name: str, column: object, size: int) -> Sequence[object]:
    if isinstance(column, (str, bytes, Mapping)) or not isinstance(column, Sequence):
        raise TypeError(f"{name} must be a list with one entry per completion, got {type(column).__name__}")
    if len(column) != size:
        raise ValueError(f"{name} has {len(column)} entries for {size} completions")
    return column


def accuracy_reward(
    completions: Sequence[object],
    solution: Sequence[object] | None = None,
    answer: Sequence[object] | None = None,
    *,
    rel_tol: float = NUMERIC_REL_TOL,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 per completion whose ``<answer>`` block matches the gold answer, 0.0 if not, ``None`` where no gold.

    The prediction is the content of the single well-formed ``<answer>...</answer>`` block (0.0 if there is none,
    several, a malformed one, one holding think tags, or one longer than :data:`MAX_ANSWER_CHARS`). Leading "The
    answer is", ``\\boxed{}``, ``$...$`` and ``\\text{}`` are stripped from both sides, then by the kind of gold:

    * a letter ``A``-``Z`` (``B``, ``(B)``, ``B.``): the prediction must commit to that letter (``B``, ``(B)``,
      ``B. Paris``, ``The answer is B``); naming two bracketed letters counts as no answer;
    * a number (``1,000``, ``3.50``, ``1/2``, ``\\frac{1}{2}``, ``5%``): the whole prediction, else what follows its
      last ``=``, else its only number, must be equal within ``rel_tol`` (``50%`` also equals ``0.5``); failing that,
      ``math_verify`` decides when installed;
    * anything else: equal after normalization (case, whitespace, punctuation), or, when both sides look like math
      and ``math_verify`` is installed, symbolically equal.

    Args:
        completions: One entry per completion: a string, or a list of message dicts (TRL conversational form).
        solution: Gold answers (dataset column ``solution``), one per completion. A gold may be a string, a number
            or a list of acceptable answers; text after a GSM8K ``####`` or inside ``<answer>`` is used.
        answer: Gold answers (dataset column ``answer``), used where ``solution`` is absent or ``None``.
        rel_tol: Relative tolerance of numeric comparison.
        **kwargs: Ignored (``prompts``, ``completion_ids``, ``trainer_state``, other columns), except a callable
            ``log_extra`` (passed by TRL's GRPOTrainer), which receives the extracted answers for its completions
            table.

    Returns:
        One float per completion, or ``None`` where the gold is missing or empty (TRL skips those rows).

    Raises:
        ValueError: Neither ``solution`` nor ``answer`` is given, or a gold column's length differs from the number
            of completions.

    >>> accuracy_reward(["<think>..</think><answer>(B)</answer>", "<answer>C</answer>"], solution=["B", "B"])
    [1.0, 0.0]
    >>> accuracy_reward(["<answer>The answer is 1,000.</answer>", "<answer>3.5</answer>"], answer=[1000, "7/2"])
    [1.0, 1.0]
    >>> completions = ["<answer>New York</answer>", "new york", "<answer>x</answer>"]
    >>> accuracy_reward(completions, ["new york.", "New York", None])
    [1.0, 0.0, None]
    """
    items = _check_completions(completions)
    if solution is None and answer is None:
        raise ValueError("accuracy_reward needs the gold answers: a dataset column named 'solution' or 'answer'")
    solutions = _gold_column("solution", solution, len(items)) if solution is not None else None
    answers = _gold_column("answer", answer, len(items)) if answer is not None else None
    rewards: list[float | None] = []
    extracted_log: list[str] = []
    for index, completion in enumerate(items):
        gold = solutions[index] if solutions is not None else None
        if gold is None and answers is not None:
            gold = answers[index]
        golds = _gold_alternatives(gold)
        predicted = extract_answer(_completion_text(completion))
        extracted_log.append("" if predicted is None else predicted[:200])
        if not golds:
            rewards.append(None)
        elif predicted is None:
            rewards.append(0.0)
        else:
            rewards.append(1.0 if any(_answer_matches(g, predicted, rel_tol) for g in golds) else 0.0)
    log_extra = kwargs.get("log_extra")
    if callable(log_extra):
        log_extra("extracted_answer", extracted_log)
    return rewards


# --------------------------------------------------------------------------------------------------------------------
# perception_reward
# --------------------------------------------------------------------------------------------------------------------

_WORDS_RE = re.compile(r"\w+")
_ARTICLES = frozenset(("a", "an", "the"))


def _words(text: str) -> Counter[str]:
    words = _WORDS_RE.findall(unicodedata.normalize("NFKC", text).casefold())
    return Counter(word for word in words if word not in _ARTICLES)


def _f1(pred: Counter[str], gold: Counter[str]) -> float:
    common = sum((pred & gold).values())
    if common == 0:
        return 0.0
    precision = common / sum(pred.values())
    recall = common / sum(gold.values())
    return 2 * precision * recall / (precision + recall)


def _perception_span(text: str | None) -> str | None:
    """``<perception>`` content, or the think block's when there is no perception tag; ``None`` if malformed."""
    if text is None:
        return None
    block = _single_block(text, "perception")
    if block is not None and not block[1]:
        block = _single_block(text, "think")
    if block is None or not block[1] or len(block[0]) > MAX_PERCEPTION_CHARS:
        return None
    return block[0]


def perception_reward(
    completions: Sequence[object], description: Sequence[object] | None = None, **kwargs: Any
) -> list[float | None]:
    """Token-level F1 between the model's description of the image and the gold description.

    The model's description is the content of the single ``<perception>...</perception>`` block or, when the
    completion has no perception tag at all, of the single ``<think>...</think>`` block (0.0 when the block is
    missing, duplicated or malformed). Both texts are NFKC-normalized, case-folded, split into words (``\\w+``) and
    the articles a/an/the dropped (SQuAD-style); F1 counts repeated words as a multiset.

    Args:
        completions: One entry per completion: a string, or a list of message dicts (TRL conversational form).
        description: Gold descriptions (dataset column ``description``), one per completion; a list of several
            acceptable descriptions scores the best of them.
        **kwargs: Ignored (``prompts``, ``completion_ids``, ``trainer_state``, other columns).

    Returns:
        One float in [0, 1] per completion, or ``None`` where there is no gold description (TRL skips those rows);
        all ``None`` when the ``description`` column is absent.

    >>> perception_reward(["<think><perception>a red cube</perception>so</think><answer>A</answer>"], ["red cube"])
    [1.0]
    >>> perception_reward(["<think>a red ball</think><answer>B</answer>"], ["a red cube"])
    [0.5]
    >>> perception_reward(["<think>x</think><answer>B</answer>", "no tags"], [None, "a red cube"])
    [None, 0.0]
    """
    items = _check_completions(completions)
    golds = _gold_column("description", description, len(items)) if description is not None else [None] * len(items)
    rewards: list[float | None] = []
    for completion, gold in zip(items, golds):
        options = [item for item in (gold if isinstance(gold, (list, tuple)) else [gold]) if isinstance(item, str)]
        gold_words = [words for words in map(_words, options) if words]
        if not gold_words:
            rewards.append(None)
            continue
        span = _perception_span(_completion_text(completion))
        if span is None:
            rewards.append(0.0)
            continue
        pred_words = _words(span)
        rewards.append(max(_f1(pred_words, words) for words in gold_words))
    return rewards


#: The reward functions by short name, e.g. for a recipe's ``reward_funcs`` list.
REWARD_FUNCTIONS: dict[str, Callable[..., list[Any]]] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "perception": perception_reward,
}
