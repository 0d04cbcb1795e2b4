"""The bundled synthetic chain-of-thought dataset.

Multi-step arithmetic: the question lists a start value and a few operations; the
``<think>`` trace works through them one at a time (long), the ``<answer>`` gives the
final number (short). The answer depends on the reasoning, so a model that gets the
trace right and the answer wrong is visible. Deterministic in ``seed``.

``synthetic_cot.jsonl`` (conversational ``messages`` format, read by TRL, Axolotl
and LLaMA-Factory alike) is exactly ``synthetic_cot(512, seed=0)``.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _spell(n: int) -> str:
    sign = "minus " if n < 0 else ""
    return sign + " ".join(NUMBER_WORDS[int(d)] for d in str(abs(n)))


def synthetic_cot(
    n: int,
    seed: int = 0,
    min_ops: int = 2,
    max_ops: int = 5,
    start_max: int = 20,
    operand_max: int = 9,
    operators: str = "+-*",
) -> list[dict[str, Any]]:
    """``n`` samples: ``{"messages": [user, assistant], "solution": "<number>"}``.

    The knobs set the difficulty: operations per question, the largest start value and operand, the operators.
    """
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        value = rng.randint(1, start_max)
        ops = [(rng.choice(operators), rng.randint(1, operand_max)) for _ in range(rng.randint(min_ops, max_ops))]
        question = (
            f"Start with {value}. "
            + " ".join({"+": f"Add {b}.", "-": f"Subtract {b}.", "*": f"Multiply by {b}."}[op] for op, b in ops)
            + " What is the result?"
        )
        lines = [f"We start with {value}, that is {_spell(value)}."]
        for op, b in ops:
            new = value + b if op == "+" else value - b if op == "-" else value * b
            lines.append(f"{value} {op} {b} = {new}, so now we have {_spell(new)}.")
            value = new
        lines.append(f"After all the steps the value is {value}.")
        completion = "<think>\n" + "\n".join(lines) + "\n</think>\n<answer>" + str(value) + "</answer>"
        samples.append(
            {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": completion}],
                "solution": str(value),
            }
        )
    return samples


def bundled_path() -> Path:
    """Path of the bundled ``synthetic_cot.jsonl``."""
    return Path(str(resources.files(__package__).joinpath("synthetic_cot.jsonl")))


def load_bundled() -> list[dict[str, Any]]:
    with bundled_path().open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(samples: list[dict[str, Any]], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
