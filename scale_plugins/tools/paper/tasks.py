"""Task families of the comparison studies (``scale-plugins study`` / ``bench-paper``), and user data.

Every sample is a dict with ``prompt`` (one user message), ``completion`` (one assistant message:
``<think>TRACE</think>\\n<answer>ANSWER</answer>``), ``solution`` (the gold answer, what
:func:`scale_plugins.rewards.accuracy_reward` compares with) and ``question`` (the user text, for disjoint splits).
Built-in families also carry what their trace scorer needs.

Families (fixed before any comparison of arms, see docs/results.md):

* ``mc``: multiple-choice word problems (4 options, letter answer). The trace works the problem out in plain
  English and ends "The result is 12, so the right option is the one that says 12." without naming the letter:
  mapping the value to its letter is the answer's job (the answer is the hard part; the arithmetic is one easy step).
* ``arith``: multi-step arithmetic with a number answer (``scale_plugins.data.synthetic_cot``'s format, 2-3 steps).
  The answer is a copy of the trace's last value: the trace is the hard part.
* ``arith_small``: the task of the from-scratch study (docs/results.md part 3): :func:`arith_cot` with ``+``/``-``,
  1-3 steps, numbers up to 9, no format instruction in the question (a model trained from scratch learns the format);
  the answer copies the trace's last value.
* ``user``: your own JSONL (``--train-file`` / ``--eval-file``); trace metrics are not defined there.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...data import synthetic_cot

INSTRUCTION = "Think step by step inside <think></think>, then give the final answer inside <answer></answer>."
MC_INSTRUCTION = (
    "Think step by step inside <think></think>, then give only the letter of the right option inside <answer></answer>."
)
LETTERS = "ABCD"
_NAMES = ("Tom", "Anna", "Sam", "Lucy", "Ben", "Mia", "Leo", "Emma", "Jack", "Nora", "Omar", "Rosa")
_ITEMS = ("apple", "book", "pencil", "marble", "cookie", "stamp", "card", "shell", "ball", "sticker")


def _sample(user: str, trace: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": user}],
        "completion": [{"role": "assistant", "content": f"<think>\n{trace}\n</think>\n<answer>{answer}</answer>"}],
        "solution": answer,
        "question": user,
        **extra,
    }


def mc_word_problem(rng: random.Random) -> dict[str, Any]:
    """One multiple-choice word problem with a 40-80 token plain-English trace (SmolLM2 tokenizer)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.choice(("add", "sub", "mul"))
    if kind == "add":
        a, b = rng.randint(2, 15), rng.randint(2, 9)
        value = a + b
        question = f"{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?"
        work = (
            f"{name} starts with {a} {item}s. Getting {b} more means we add them: {a} + {b} = {value}. "
            f"So {name} now has {value} {item}s."
        )
    elif kind == "sub":
        a = rng.randint(8, 20)
        b = rng.randint(2, a - 2)
        value = a - b
        question = f"{name} has {a} {item}s and gives {b} away. How many {item}s does {name} have left?"
        work = (
            f"{name} starts with {a} {item}s. Giving {b} away means we take them off: {a} - {b} = {value}. "
            f"So {name} has {value} {item}s left."
        )
    else:
        a, b = rng.randint(2, 6), rng.randint(2, 5)
        value = a * b
        question = f"{name} has {a} bags with {b} {item}s in each bag. How many {item}s does {name} have in all?"
        work = (
            f"There are {a} bags and each bag holds {b} {item}s. {a} groups of {b} is {a} x {b} = {value}. "
            f"So {name} has {value} {item}s in all."
        )
    distractors: set[int] = set()
    while len(distractors) < 3:
        d = value + rng.choice((-3, -2, -1, 1, 2, 3, 10))
        if d >= 0 and d != value:
            distractors.add(d)
    options = [value, *sorted(distractors)]
    rng.shuffle(options)
    letter = LETTERS[options.index(value)]
    listing = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
    user = f"{question}\n{listing}\n{MC_INSTRUCTION}"
    trace = (
        f"The question asks how many {item}s {name} has at the end. {work} "
        f"The result is {value}, so the right option is the one that says {value}."
    )
    return _sample(user, trace, letter, options=[str(o) for o in options], value=str(value))


def arith_problem(rng: random.Random) -> dict[str, Any]:
    """Multi-step arithmetic (2-3 steps, +/-), trace in ``synthetic_cot``'s words; the answer copies the trace."""
    sample = synthetic_cot(1, rng.randrange(2**31), min_ops=2, max_ops=3, start_max=20, operand_max=9, operators="+-")[
        0
    ]
    question = sample["messages"][0]["content"]
    trace = sample["messages"][1]["content"].split("<think>\n", 1)[1].split("\n</think>", 1)[0]
    return _sample(f"{question}\n{INSTRUCTION}", trace, sample["solution"], value=sample["solution"])


def _sampled_splits(
    family: str, make: Callable[[random.Random], dict[str, Any]]
) -> Callable[[int, int, int, int], tuple[list, list, list]]:
    """Splits of a family whose samples ``make`` draws one at a time (questions may repeat in train)."""

    def splits(n_train: int, n_dev: int, n_eval: int, seed: int) -> tuple[list, list, list]:
        rng = random.Random(f"{family}-{seed}")
        train = [make(rng) for _ in range(n_train)]
        seen = {s["question"] for s in train}
        rest: list[dict[str, Any]] = []
        tries = 0
        while len(rest) < n_dev + n_eval:
            s = make(rng)
            tries += 1
            if s["question"] not in seen:
                seen.add(s["question"])
                rest.append(s)
            if tries > 100 * (n_dev + n_eval) + 1000:
                raise ValueError(f"family {family}: too few distinct questions for disjoint splits")
        return train, rest[:n_dev], rest[n_dev:]

    return splits


# -- the from-scratch study's task ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """Knobs of :func:`arith_cot` (the defaults are ``synthetic_cot``'s)."""

    min_ops: int = 2
    max_ops: int = 5
    start_max: int = 20
    operand_max: int = 9
    ops: str = "+-*"
    data_seed: int = 1234  # the data is the same for every seed of a study; the seed moves init and data order


#: the task of ``arith_small``, fixed on vanilla SFT alone before any comparison (docs/results.md part 3)
SMALL_TASK = Task(ops="+-", min_ops=1, max_ops=3, start_max=9)


def arith_cot(n: int, seed: int = 0, task: Task = Task()) -> list[dict[str, Any]]:
    """``n`` samples in the format of :func:`scale_plugins.data.synthetic_cot`, with the task's difficulty knobs.

    With the default :class:`Task` (and any ``data_seed``) it produces exactly ``synthetic_cot(n, seed)``.
    Each sample: ``{"messages": [user, assistant], "solution": "<number>", "question": "<user text>"}``.
    """
    samples = synthetic_cot(
        n,
        seed,
        min_ops=task.min_ops,
        max_ops=task.max_ops,
        start_max=task.start_max,
        operand_max=task.operand_max,
        operators=task.ops,
    )
    return [{**sample, "question": sample["messages"][0]["content"]} for sample in samples]


def task_splits(task: Task, n_train: int, n_eval: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) of :func:`arith_cot`: deterministic in ``task``; no held-out question occurs in train, none
    twice in held-out."""
    train = arith_cot(n_train, seed=task.data_seed, task=task)
    seen = {s["question"] for s in train}
    held_out: list[dict[str, Any]] = []
    offset = 1
    while len(held_out) < n_eval:
        for s in arith_cot(4 * n_eval, seed=task.data_seed + 7919 * offset, task=task):
            if s["question"] not in seen:
                seen.add(s["question"])
                held_out.append(s)
                if len(held_out) == n_eval:
                    break
        offset += 1
        if offset > 50:
            raise ValueError("the task has too few distinct questions for a disjoint held-out split")
    return train, held_out


def _small_splits(n_train: int, n_dev: int, n_eval: int, seed: int) -> tuple[list, list, list]:
    """``arith_small`` in the families' shape; dev is the first ``n_dev`` of the held-out questions (none in the
    from-scratch study, whose held-out split is then exactly :func:`task_splits`' of docs/results.md part 3)."""

    def shaped(s: dict[str, Any]) -> dict[str, Any]:
        user, assistant = s["messages"]
        return {"prompt": [user], "completion": [assistant], "solution": s["solution"], "question": s["question"],
                "value": s["solution"]}  # fmt: skip

    train, held = task_splits(dataclasses.replace(SMALL_TASK, data_seed=seed), n_train, n_dev + n_eval)
    return [shaped(s) for s in train], [shaped(s) for s in held[:n_dev]], [shaped(s) for s in held[n_dev:]]


#: family -> its splits (n_train, n_dev, n_eval, seed) -> (train, dev, held-out)
FAMILIES: dict[str, Callable[[int, int, int, int], tuple[list, list, list]]] = {
    "mc": _sampled_splits("mc", mc_word_problem),
    "arith": _sampled_splits("arith", arith_problem),
    "arith_small": _small_splits,
}


def make_splits(family: str, n_train: int, n_dev: int, n_eval: int, seed: int = 1234) -> tuple[list, list, list]:
    """(train, dev, held-out), deterministic; dev and held-out questions never occur in train or in each other."""
    return FAMILIES[family](n_train, n_dev, n_eval, seed)


# -- trace diagnostics ----------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"-?\d+")


def trace_value(family: str, think: str) -> str | None:
    """The value the trace concludes with (its last number), for the built-in families; ``None`` otherwise."""
    if family not in FAMILIES:
        return None
    numbers = _NUMBER_RE.findall(think)
    return numbers[-1] if numbers else None


def answer_value(family: str, answer: str | None, sample: dict[str, Any]) -> str | None:
    """The value an answer stands for: the option text behind an ``mc`` letter, the number for ``arith``."""
    if answer is None:
        return None
    answer = answer.strip()
    if family == "mc":
        m = re.fullmatch(r"\(?([A-Da-d])\)?[.)]?", answer)
        return sample["options"][LETTERS.index(m.group(1).upper())] if m else None
    return answer


# -- user data ------------------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def load_user_file(path: str | Path, answer_column: str | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file of ``messages`` rows or ``prompt`` / ``completion`` rows, with a gold answer column.

    ``messages``: the last assistant message is the completion, the messages before it the prompt.
    ``prompt`` / ``completion``: strings or message lists (strings become one user / assistant message).
    The gold answer is ``answer_column`` if given, else ``solution``, else ``answer``. Rows are returned in the
    built-in families' shape (``prompt``, ``completion`` message lists, ``solution``, ``question``).
    """
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            raw = json.loads(line)
            if "messages" in raw:
                messages = raw["messages"]
                last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
                if last is None or last == 0:
                    raise ValueError(f"{path}:{lineno}: 'messages' needs a prompt and a final assistant message")
                prompt, completion = messages[:last], [messages[last]]
            elif "prompt" in raw and "completion" in raw:
                prompt, completion = raw["prompt"], raw["completion"]
                if isinstance(prompt, str):
                    prompt = [{"role": "user", "content": prompt}]
                if isinstance(completion, str):
                    completion = [{"role": "assistant", "content": completion}]
            else:
                raise ValueError(f"{path}:{lineno}: expected 'messages' or 'prompt' + 'completion'")
            keys = [answer_column] if answer_column else ["solution", "answer"]
            gold = next((raw[k] for k in keys if k in raw and raw[k] is not None), None)
            if gold is None:
                raise ValueError(f"{path}:{lineno}: no gold answer column ({' / '.join(keys)})")
            question = "\n".join(_text(m.get("content", "")) for m in prompt)
            rows.append({"prompt": prompt, "completion": completion, "solution": str(gold), "question": question})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
