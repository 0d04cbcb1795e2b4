"""GRPO reward functions: format, accuracy, perception; adversarial input; TRL's calling convention."""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import math
import pathlib
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scale_plugins import rewards as R
from scale_plugins.rewards import REWARD_FUNCTIONS, accuracy_reward, format_reward, perception_reward

GOOD = "<think>2 + 2 = 4</think>\n<answer>4</answer>"
HUGE = 10_000_000


@pytest.fixture
def no_math_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule-based matcher alone, whether or not math_verify is installed."""
    monkeypatch.setattr(R, "_MATH_VERIFY", None)


def acc(answer: str, gold: Any) -> float | None:
    return accuracy_reward([f"<think>t</think><answer>{answer}</answer>"], solution=[gold])[0]


# --------------------------------------------------------------------------------------------------------------------
# docs and registry
# --------------------------------------------------------------------------------------------------------------------


def test_doctests() -> None:
    result = doctest.testmod(R, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted >= 9


def test_every_public_function_has_a_doctest() -> None:
    finder = doctest.DocTestFinder()
    for name in [n for n in R.__all__ if inspect.isfunction(getattr(R, n))]:
        tests = finder.find(getattr(R, name), name)
        assert tests and tests[0].examples, name


def test_registry() -> None:
    assert REWARD_FUNCTIONS == {"format": format_reward, "accuracy": accuracy_reward, "perception": perception_reward}
    # TRL names each reward (logs, reward_weights order) by __name__
    assert [f.__name__ for f in REWARD_FUNCTIONS.values()] == ["format_reward", "accuracy_reward", "perception_reward"]
    assert set(R.__all__) == {
        "REWARD_FUNCTIONS",
        "accuracy_reward",
        "extract_answer",
        "format_reward",
        "perception_reward",
    }


# --------------------------------------------------------------------------------------------------------------------
# format_reward
# --------------------------------------------------------------------------------------------------------------------

FORMAT_OK = [
    GOOD,
    "<think>a</think><answer>b</answer>",
    "  \n<think>\nreasoning\n</think>\n\n<answer>\nB\n</answer>\n  ",
    "<think><perception>a red cube</perception> so B</think><answer>B</answer>",
    "<think>I was <thinking> about <answering> it</think><answer>B</answer>",  # not think/answer tags
    "<think>数学 🤔 ünïcödé</think>\t<answer>Ωμέγα</answer>",
    "<think>x < y and y > z</think><answer>x<z</answer>",
]

FORMAT_BAD = {
    "empty": "",
    "whitespace": "   \n ",
    "plain": "The answer is 4",
    "no think": "<answer>4</answer>",
    "no answer": "<think>t</think>",
    "reversed": "<answer>4</answer><think>t</think>",
    "text before": "Sure! <think>t</think><answer>4</answer>",
    "text between": "<think>t</think> so <answer>4</answer>",
    "text after": "<think>t</think><answer>4</answer> done",
    "nested think": "<think>a<think>b</think>c</think><answer>4</answer>",
    "nested answer": "<think>t</think><answer><answer>4</answer></answer>",
    "duplicated think": "<think>a</think><think>b</think><answer>4</answer>",
    "duplicated answer": "<think>t</think><answer>4</answer><answer>5</answer>",
    "think inside answer": "<think>t</think><answer><think>x</think>4</answer>",
    "answer inside think": "<think>t<answer>3</answer></think><answer>4</answer>",
    "stray closing tag in answer": "<think>t</think><answer>4</think></answer>",
    "unclosed think": "<think>t<answer>4</answer>",
    "unclosed answer": "<think>t</think><answer>4",
    "empty think": "<think> \n</think><answer>4</answer>",
    "empty answer": "<think>t</think><answer>  </answer>",
    "upper case tag": "<THINK>t</THINK><answer>4</answer>",
    "mixed case tag": "<think>t</Think><answer>4</answer>",
    "tag with space": "<think >t</think><answer>4</answer>",
    "tag with attribute": "<think>t</think><answer id='1'>4</answer>",
    "unterminated tag": "<think>t</think><answer 4</answer>",
    "only tags": "<think></think><answer></answer>",
}


@pytest.mark.parametrize("text", FORMAT_OK)
def test_format_ok(text: str) -> None:
    assert format_reward([text]) == [1.0]


@pytest.mark.parametrize("text", list(FORMAT_BAD.values()), ids=list(FORMAT_BAD))
def test_format_bad(text: str) -> None:
    assert format_reward([text]) == [0.0]


def test_format_batch_order_and_types() -> None:
    out = format_reward([GOOD, "nope", GOOD])
    assert out == [1.0, 0.0, 1.0]
    assert all(type(x) is float for x in out)
    assert format_reward([]) == []


# --------------------------------------------------------------------------------------------------------------------
# completion forms and garbage
# --------------------------------------------------------------------------------------------------------------------

GARBAGE: list[Any] = [
    None,
    42,
    3.5,
    True,
    b"<think>t</think><answer>4</answer>",
    {},
    {"content": 5},
    {"role": "user", "content": GOOD},
    [],
    [None],
    [42, "x"],
    [{"role": "assistant"}],
    [{"role": "assistant", "content": None}],
    [{"role": "assistant", "content": [{"type": "image"}]}],
    [{"role": "user", "content": GOOD}],
    object(),
    float("nan"),
    "",
    "\x00\x01\x02",
    "<" * 1000,
    "<think>" * 1000,
    "</answer><answer>" * 1000,
    "\ud800<think>t</think><answer>4</answer>\udfff",  # lone surrogates: still a str, scored as text
]


@pytest.mark.parametrize("completion", GARBAGE, ids=[f"g{i}" for i in range(len(GARBAGE))])
def test_garbage_never_raises(completion: Any) -> None:
    n = 1
    fmt = format_reward([completion])
    accuracy = accuracy_reward([completion], solution=["4"])
    perception = perception_reward([completion], description=["a red cube"])
    assert len(fmt) == len(accuracy) == len(perception) == n
    if completion is not GARBAGE[-1]:
        assert fmt == [0.0] and accuracy == [0.0] and perception == [0.0]


def test_surrogates_scored_as_text() -> None:
    text = "\ud800<think>t</think><answer>4</answer>\udfff"
    assert format_reward([text]) == [0.0]  # text outside the blocks
    assert accuracy_reward([text], solution=["4"]) == [1.0]


def test_conversational_forms() -> None:
    plain = [{"role": "assistant", "content": GOOD}]
    no_role = [{"content": GOOD}]  # TRL's own doc examples omit the role
    parts = [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "<think>t</think>"},
                {"type": "image"},
                {"type": "text", "text": "<answer>4</answer>"},
            ],
        }
    ]
    tool_turns = [
        {"role": "assistant", "content": "<think>call a tool</think>", "tool_calls": [{"name": "calc"}]},
        {"role": "tool", "content": "<answer>999</answer>"},
        {"role": "assistant", "content": GOOD},
    ]
    trailing_user = [{"role": "assistant", "content": GOOD}, {"role": "user", "content": "thanks"}]
    single_dict = {"role": "assistant", "content": GOOD}
    batch = [plain, no_role, parts, tool_turns, trailing_user, single_dict, GOOD]
    assert format_reward(batch) == [1.0] * len(batch)
    assert accuracy_reward(batch, solution=["4"] * len(batch)) == [1.0] * len(batch)
    last_assistant_wrong = [{"role": "assistant", "content": GOOD}, {"role": "assistant", "content": "oops"}]
    assert format_reward([last_assistant_wrong]) == [0.0]


def test_completions_container() -> None:
    assert format_reward(iter([GOOD, "x"])) == [1.0, 0.0]
    assert format_reward((GOOD,)) == [1.0]
    for bad in ("<think>t</think><answer>4</answer>", {"content": GOOD}, None, 5):
        with pytest.raises(TypeError):
            format_reward(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "<think>" + "x" * HUGE + "</think><answer>4</answer>",
        "<" * HUGE,
        "<think>" * (HUGE // 7),
        "<thinking" * (HUGE // 9),
        "<answer>" + "1" * HUGE + "</answer>",
        "<answer>" + "1," * (HUGE // 2) + "</answer>",
        "<think>a</think>" + " " * HUGE + "<answer>4</answer>",
        "<think>" + "(" * HUGE + "</think><answer>" + "\\boxed{" * 4000 + "</answer>",
        "İ" * 1000 + "<" * HUGE,  # lower() changes the length: the regex path
        "a" * HUGE,
    ],
    ids=["long-think", "lt", "think-tags", "thinking", "digits", "commas", "spaces", "braces", "non-ascii", "letters"],
)
def test_huge_completions_score_without_raising(text: str) -> None:
    # Linear-time scanning is what keeps this from hanging (no backtracking regexes); speed is not asserted here.
    fmt = format_reward([text])
    accuracy = accuracy_reward([text], solution=["4"])
    perception = perception_reward([text], description=["x"])
    assert all(v is not None and 0.0 <= v <= 1.0 for v in fmt + accuracy + perception)


def test_huge_scores() -> None:
    long_think = "<think>" + "x " * (HUGE // 2) + "</think><answer>4</answer>"
    assert format_reward([long_think]) == [1.0]
    assert accuracy_reward([long_think], solution=["4"]) == [1.0]
    assert perception_reward([long_think], description=["x"]) == [0.0]  # over MAX_PERCEPTION_CHARS
    long_answer = "<think>t</think><answer>4" + " " * R.MAX_ANSWER_CHARS + "4</answer>"
    assert accuracy_reward([long_answer], solution=["4"]) == [0.0]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/ thinkanswerperception{}\\$()AB1.,%=é\n")), max_size=80))
def test_random_tag_soup(text: str) -> None:
    for fn, kwargs in (
        (format_reward, {}),
        (accuracy_reward, {"solution": ["B"]}),
        (perception_reward, {"description": ["think"]}),
    ):
        out = fn([text, [{"role": "assistant", "content": text}]], **{k: v * 2 for k, v in kwargs.items()})
        assert len(out) == 2 and out[0] == out[1]
        assert out[0] is not None and 0.0 <= out[0] <= 1.0


TAG_SOUP = [
    *"<>/_ xé1\n\u0130\u212a\u0301",
    *("<think>", "</think>", "<answer>", "</answer>", "<perception>", "</perception>"),
    *("<THINK>", "</Answer>", "<think", "</answer", "<thinking>", "<answer_", "<th\u0130nk>", "<thin\u212a>", "think"),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(TAG_SOUP), max_size=12).map("".join),
    st.sampled_from([("think", "answer"), ("answer",), ("think",), ("perception",)]),
    st.integers(min_value=1, max_value=6),
)
def test_fast_tag_scan_agrees_with_regex(text: str, names: tuple[str, ...], limit: int) -> None:
    def key(tags: list[Any]) -> list[tuple[Any, ...]]:
        return [(t.name, t.closing, t.exact, t.start, t.end) for t in tags]

    assert key(R._tags(text, names, limit)) == key(R._tags_by_regex(text, names, limit))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.text(min_size=1, max_size=20))
def test_random_text_accuracy(text: str, gold: str) -> None:
    out = accuracy_reward([f"<think>t</think><answer>{text}</answer>", text], solution=[gold, gold])
    assert out[1] in (0.0, None)
    assert all(v is None or v in (0.0, 1.0) for v in out)


# --------------------------------------------------------------------------------------------------------------------
# accuracy_reward
# --------------------------------------------------------------------------------------------------------------------

RULE_CASES = [
    # multiple choice
    ("B", "B", 1.0),
    ("(B)", "B", 1.0),
    ("B.", "B", 1.0),
    ("b", "B", 1.0),
    ("The answer is B", "B", 1.0),
    ("The answer is (B).", "(B)", 1.0),
    ("B. Paris", "B", 1.0),
    ("(B) Paris", "B.", 1.0),
    ("I pick option C.", "C", 1.0),
    ("\\boxed{B}", "B", 1.0),
    ("C", "B", 0.0),
    ("(A) or (B)", "B", 0.0),
    ("A or B", "B", 0.0),
    ("Answer: I think C", "C", 0.0),
    ("the answer is a cat", "A", 0.0),
    ("Paris", "B", 0.0),
    # numbers
    ("1000", "1,000", 1.0),
    ("1,000", "1000", 1.0),
    ("3.50", "3.5", 1.0),
    ("0.5", "1/2", 1.0),
    ("1/2", "0.5", 1.0),
    ("\\frac{1}{2}", "0.5", 1.0),
    ("$\\dfrac{3}{4}$", "0.75", 1.0),
    ("50%", "50", 1.0),
    ("50\\%", "50%", 1.0),
    ("0.5", "50%", 1.0),
    ("1.0000001", "1", 1.0),
    ("1.00001", "1", 0.0),
    ("35", "3.5", 0.0),
    ("x = 42", "42", 1.0),
    ("42 apples", "42", 1.0),
    ("The answer is $\\boxed{42}$.", "42", 1.0),
    ("$5.00", "5", 1.0),
    ("\u22125", "-5", 1.0),  # unicode minus
    ("-5", "5", 0.0),
    ("between 40 and 50", "50", 0.0),  # two numbers: no commitment
    ("1e3", "1000", 1.0),
    ("0", "0", 1.0),
    ("1/0", "0", 0.0),
    ("12", "1,2", 0.0),
    # strings
    ("New York.", "new york", 1.0),
    ("  new   YORK ", "New York", 1.0),
    ("The answer is Paris", "Paris", 1.0),
    ("\\text{Paris}", "Paris", 1.0),
    ("Paris", "sirap", 0.0),
    ("Pairs", "Paris", 0.0),
    ("x^2 + 1", "x^2+1", 1.0),
    ("x+1", "x-1", 0.0),
    ("(1, 2)", "(1,2)", 1.0),
    ("Answering is hard", "hard", 0.0),
    ("...", "!!!", 0.0),
]


@pytest.mark.usefixtures("no_math_verify")
@pytest.mark.parametrize(("pred", "gold", "expected"), RULE_CASES, ids=[f"{p}|{g}" for p, g, _ in RULE_CASES])
def test_accuracy_rules(pred: str, gold: str, expected: float) -> None:
    assert acc(pred, gold) == expected


@pytest.mark.usefixtures("no_math_verify")
def test_accuracy_tolerance_is_configurable() -> None:
    assert accuracy_reward(["<answer>1.001</answer>"], solution=["1"]) == [0.0]
    assert accuracy_reward(["<answer>1.001</answer>"], solution=["1"], rel_tol=1e-2) == [1.0]


@pytest.mark.usefixtures("no_math_verify")
def test_accuracy_needs_one_well_formed_answer_block() -> None:
    cases = {
        "The answer is 4": 0.0,
        "<think>4</think>": 0.0,
        "<answer>4</answer><answer>4</answer>": 0.0,
        "<answer><answer>4</answer></answer>": 0.0,
        "<answer>4": 0.0,
        "4</answer>": 0.0,
        "<answer><think>5</think>4</answer>": 0.0,
        "<answer>4</think></answer>": 0.0,
        "<Answer>4</Answer>": 0.0,
        "<answer >4</answer>": 0.0,
        "<answer></answer>": 0.0,
        # accuracy only judges the answer block; structure is format_reward's job
        "<answer>4</answer><think>t</think>": 1.0,
        "chatter <answer> 4 </answer> more chatter": 1.0,
        "<think>5</think><think>6</think><answer>4</answer>": 1.0,
    }
    for text, expected in cases.items():
        assert accuracy_reward([text], solution=["4"]) == [expected], text


@pytest.mark.usefixtures("no_math_verify")
def test_accuracy_gold_handling() -> None:
    done = "<think>t</think><answer>72</answer>"
    assert accuracy_reward([done], solution=[72]) == [1.0]
    assert accuracy_reward([done], solution=[72.0]) == [1.0]
    assert accuracy_reward([done], answer=["Natalia sold 48/2 = 24 clips...\n#### 72"]) == [1.0]  # GSM8K
    assert accuracy_reward([done], solution=["so the total is $\\boxed{72}$."]) == [1.0]  # MATH-style solution
    assert accuracy_reward([done], solution=["<think>x</think><answer>72</answer>"]) == [1.0]
    assert accuracy_reward([done], solution=[["seventy-two", "72"]]) == [1.0]  # alternatives
    assert accuracy_reward([done], solution=[["1", "2"]]) == [0.0]
    for no_gold in (None, "", "   ", [], [None], float("nan"), True, {"a": 1}):
        assert accuracy_reward([done], solution=[no_gold]) == [None], no_gold
    # solution wins over answer; answer fills in rows where solution is None
    assert accuracy_reward([done, done], solution=["72", None], answer=["1", "72"]) == [1.0, 1.0]
    assert accuracy_reward([done], solution=["1"], answer=["72"]) == [0.0]


def test_accuracy_column_errors() -> None:
    with pytest.raises(ValueError, match="solution"):
        accuracy_reward([GOOD])
    with pytest.raises(ValueError, match="1 entries for 2"):
        accuracy_reward([GOOD, GOOD], solution=["4"])
    with pytest.raises(TypeError):
        accuracy_reward([GOOD], solution="4")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        perception_reward([GOOD], description=["a", "b"])


class _FakeMathVerify:
    """Records how math_verify would be called."""

    def __init__(self, result: bool = True, fail: bool = False) -> None:
        self.result, self.fail = result, fail
        self.parsed: list[tuple[str, Any]] = []

    def parse(self, text: str, parsing_timeout: Any = "unset") -> list[str]:
        if self.fail:
            raise RuntimeError("boom")
        self.parsed.append((text, parsing_timeout))
        return [text]

    def verify(self, gold: Any, pred: Any, timeout_seconds: Any = "unset") -> bool:
        return self.result


def test_math_verify_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeMathVerify()
    monkeypatch.setattr(R, "_MATH_VERIFY", (fake.parse, fake.verify))
    assert acc("1+x^2", "x^2+1") == 1.0
    assert fake.parsed == [("$x^2+1$", R.MATH_VERIFY_TIMEOUT_S), ("$1+x^2$", R.MATH_VERIFY_TIMEOUT_S)]
    fake.parsed.clear()
    assert acc("\\sqrt{4}", "2") == 1.0  # numeric gold, non-numeric prediction
    assert fake.parsed[1][0] == "$\\sqrt{4}$"  # bare math is wrapped in $...$ for math_verify's LaTeX parser
    fake.parsed.clear()
    assert acc("The answer is $\\sqrt{4}$.", "2") == 1.0
    assert fake.parsed[1][0] == "The answer is $\\sqrt{4}$."  # already delimited: parsed as written
    fake.parsed.clear()
    assert acc("the root is $\\sqrt{4}$", "2") == 0.0  # prose around the math: not sent to math_verify
    assert acc("\\boxed{sirap}", "so it is \\boxed{Paris}") == 0.0  # nor words inside LaTeX
    assert fake.parsed == []
    fake.parsed.clear()
    assert acc("Paris", "sirap") == 0.0  # prose never goes to math_verify (symbol products)
    assert acc("B", "C") == 0.0  # multiple choice never does either
    assert fake.parsed == []
    # off the main thread signal.alarm is unavailable: no timeouts
    thread = threading.Thread(target=lambda: acc("y", "x"))
    thread.start()
    thread.join()
    assert fake.parsed and all(timeout is None for _, timeout in fake.parsed)


def test_math_verify_errors_score_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeMathVerify(fail=True)
    monkeypatch.setattr(R, "_MATH_VERIFY", (fake.parse, fake.verify))
    assert acc("1+x^2", "x^2+1") == 0.0
    assert acc("42", "42") == 1.0  # the rules still answer


@pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="math_verify not installed")
@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("1+x^2", "x^2+1", 1.0),
        ("\\sqrt{4}", "2", 1.0),
        ("\\frac{\\pi}{2}", "\\pi/2", 1.0),
        ("3.5", "35", 0.0),
        ("Paris", "sirap", 0.0),
        ("x+1", "x-1", 0.0),
    ],
)
def test_real_math_verify(pred: str, gold: str, expected: float) -> None:
    assert R._MATH_VERIFY is not None
    assert acc(pred, gold) == expected


# --------------------------------------------------------------------------------------------------------------------
# perception_reward
# --------------------------------------------------------------------------------------------------------------------


def test_perception_f1() -> None:
    assert perception_reward(
        ["<think><perception>A red cube.</perception>so</think><answer>A</answer>"], description=["a RED cube"]
    ) == [1.0]
    # tokens: pred {red, ball, on, table}, gold {red, cube}: P = 1/4, R = 1/2
    (score,) = perception_reward(
        ["<think>a red ball on the table</think><answer>B</answer>"], description=["a red cube"]
    )
    assert math.isclose(score, 2 * 0.25 * 0.5 / 0.75)
    # repeated words count as a multiset
    (score,) = perception_reward(["<think>red red red</think><answer>B</answer>"], description=["red cube"])
    assert math.isclose(score, 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    # unicode words
    assert perception_reward(["<think>ÉTÉ 猫</think><answer>B</answer>"], description=["été 猫"]) == [1.0]


def test_perception_span_choice() -> None:
    gold = ["red cube"]
    # the perception block is preferred over the think block
    assert perception_reward(["<think>blue sphere <perception>red cube</perception></think>"], gold) == [1.0]
    # perception tags anywhere count, even outside think
    assert perception_reward(["<perception>red cube</perception><answer>A</answer>"], gold) == [1.0]
    # malformed or duplicated perception tags: 0, no fallback to think
    for text in [
        "<think>red cube <perception>red cube</think>",
        "<think><perception>red</perception><perception>cube</perception></think>",
        "<think><Perception>red cube</Perception></think>",
        "<think></perception>red cube<perception></think>",
    ]:
        assert perception_reward([text], gold) == [0.0], text
    # no perception and no single think block
    for text in ["red cube", "<answer>red cube</answer>", "<think>red</think><think>cube</think>", "<think>red cube"]:
        assert perception_reward([text], gold) == [0.0], text


def test_perception_gold_handling() -> None:
    text = "<think>red cube</think><answer>A</answer>"
    assert perception_reward([text]) == [None]  # no description column
    assert perception_reward([text, text, text, text], description=[None, "", "...", 5]) == [None] * 4
    assert perception_reward([text], description=[["blue sphere", "red cube"]]) == [1.0]
    assert perception_reward([text], description=["the a an"]) == [None]  # nothing left after normalization


# --------------------------------------------------------------------------------------------------------------------
# TRL's calling convention
# --------------------------------------------------------------------------------------------------------------------


class _TrainerState:
    global_step = 3
    max_steps = 10


def _trl_call(fn: Any, inputs: list[dict[str, Any]], completions: list[Any], logged: dict[str, list[Any]]) -> Any:
    """Call ``fn`` exactly as TRL 1.16's GRPOTrainer._calculate_rewards does."""
    prompts = [example["prompt"] for example in inputs]
    keys = [key for key in inputs[0] if key not in ["prompt", "completion", "completion_ids"]]
    reward_kwargs: dict[str, Any] = {key: [example[key] for example in inputs] for key in keys}
    reward_kwargs["trainer_state"] = _TrainerState()
    reward_kwargs["log_extra"] = lambda column, values: logged.setdefault(column, []).extend(values)
    reward_kwargs["log_metric"] = lambda name, value: None
    reward_kwargs["environments"] = [None] * len(prompts)
    completion_ids = [[1, 2, 3] for _ in completions]
    return fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_keyword_set(conversational: bool) -> None:
    texts = [GOOD, "<think>a red cube</think><answer>5</answer>", "garbage"]
    inputs = [
        {
            "prompt": "What is 2+2?",
            "solution": "4",
            "answer": "4",
            "description": "a red cube",
            "image": None,
            "id": 7,
            "completion_ids": [9],
        },
        {
            "prompt": "What is 2+2?",
            "solution": "4",
            "answer": None,
            "description": None,
            "image": None,
            "id": 8,
            "completion_ids": [9],
        },
        {
            "prompt": "Name it.",
            "solution": None,
            "answer": None,
            "description": "x",
            "image": None,
            "id": 9,
            "completion_ids": [9],
        },
    ]
    if conversational:
        for example in inputs:
            example["prompt"] = [{"role": "user", "content": example["prompt"]}]
        completions: list[Any] = [[{"role": "assistant", "content": text}] for text in texts]
    else:
        completions = texts
    logged: dict[str, list[Any]] = {}
    assert _trl_call(format_reward, inputs, completions, logged) == [1.0, 1.0, 0.0]
    assert _trl_call(accuracy_reward, inputs, completions, logged) == [1.0, 0.0, None]
    assert logged == {"extracted_answer": ["4", "5", ""]}
    perception = _trl_call(perception_reward, inputs, completions, logged)
    assert perception[0] == 0.0 and perception[1] is None and perception[2] == 0.0


def test_signatures_bind_trl_keywords() -> None:
    trl_kwargs = {
        "prompts": [],
        "completions": [],
        "completion_ids": [],
        "trainer_state": None,
        "log_extra": None,
        "log_metric": None,
        "environments": None,
        "solution": [],
        "answer": [],
        "description": [],
        "image": [],
        "some_column": [],
    }
    for fn in REWARD_FUNCTIONS.values():
        inspect.signature(fn).bind(**trl_kwargs)
        assert fn(**trl_kwargs) == []


def test_installed_trl_still_calls_this_way() -> None:
    """Guard against TRL changing the call: read (not import) the installed GRPOTrainer source."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("trl not installed")
    source = (pathlib.Path(next(iter(spec.submodule_search_locations))) / "trainer" / "grpo_trainer.py").read_text()
    assert "prompts=prompts, completions=completions, completion_ids=completion_ids_list, **reward_kwargs" in source
    assert "reward if reward is not None else torch.nan" in source  # None means "skip this row"
    for key in ("trainer_state", "log_extra", "log_metric"):
        assert f'reward_kwargs["{key}"]' in source
