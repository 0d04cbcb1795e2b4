"""The YAML keys: derived from the core's options, validated naming the key; refused combinations."""

from __future__ import annotations

import dataclasses

import pytest

from scale_plugins.core import ScaleConfigError, option_fields

from .helpers import train_config


@pytest.fixture
def run_exp(patched):
    from llamafactory.train.tuner import run_exp

    return run_exp


def test_fields_are_derived_from_the_core_options(patched):
    from llamafactory.hparams import parser

    from scale_plugins.llamafactory.hparams import ScaleFinetuningArguments

    assert ScaleFinetuningArguments in parser._TRAIN_ARGS and ScaleFinetuningArguments in parser._INFER_ARGS
    fields = {f.name: f for f in dataclasses.fields(ScaleFinetuningArguments)}
    assert fields["use_scale_loss"].default is False
    for opt in option_fields():
        field = fields[f"scale_{opt.name}"]
        assert field.default == (None if opt.name == "extra_segments" else opt.default)
        assert opt.help in field.metadata["help"]
        assert field.metadata.get("choices") == (list(opt.choices) if opt.choices else None)


def test_defaults_give_the_core_defaults(patched):
    from scale_plugins.core import ScaleOptions
    from scale_plugins.llamafactory.hparams import ScaleFinetuningArguments

    assert ScaleFinetuningArguments(use_scale_loss=True).scale_options() == ScaleOptions()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("scale_schedule", "cosin", "choose one of"),
        ("scale_normalization", "batch", "choose one of"),
        ("scale_answer_weight_start", 1.5, "out of range"),
        ("scale_answer_weight_end", "high", "must be a number"),
        ("scale_step_at", True, "must be a number"),
        ("scale_think_close", "<think>", "must differ"),
        ("scale_think_open", "", "non-empty"),
        ("scale_on_missing_think", "crash", "choose one of"),
        ("scale_extra_segments", [{"name": "think", "open": "<p>", "close": "</p>"}], "reserved"),
        ("scale_extra_segments", ["perception:<p>"], "must look like"),
        ("scale_ignore_index", -1, "-100"),
        ("use_scale_loss", "yes", "true or false"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(run_exp, tiny, tmp_path, key, value, message):
    with pytest.raises(ScaleConfigError, match=key) as err:
        run_exp(train_config(tiny, tmp_path, **{key: value}))
    assert message in str(err.value)


def test_extra_segments_from_yaml_and_command_line(patched):
    from scale_plugins.llamafactory.hparams import ScaleFinetuningArguments

    yaml_style = ScaleFinetuningArguments(
        use_scale_loss=True,
        scale_extra_segments=[{"name": "perception", "open": "<p>", "close": "</p>", "weight": 0.3}],
    ).scale_options()
    cli_style = ScaleFinetuningArguments(
        use_scale_loss=True, scale_extra_segments=["perception:<p>:</p>:0.3"]
    ).scale_options()
    assert yaml_style == cli_style
    assert yaml_style.segment_names == ("think", "answer", "perception")


def test_scale_keys_without_the_switch_are_rejected(run_exp, tiny, tmp_path):
    with pytest.raises(ScaleConfigError, match="scale_schedule.*use_scale_loss"):
        run_exp(train_config(tiny, tmp_path, use_scale_loss=False, scale_schedule="linear"))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("scale_schedul", "scale_schedul: unknown SCALe key; did you mean `scale_schedule`?"),
        ("scale_answer_weight_middle", "did you mean `scale_answer_weight_end`?"),
        ("use_scale_los", "use_scale_los: unknown SCALe key; did you mean `use_scale_loss`?"),
        ("scale_xyz", "scale_xyz: unknown SCALe key; the SCALe keys are: use_scale_loss, scale_think_open,"),
        (
            "answer_weight_end",
            "answer_weight_end: unknown SCALe key (SCALe options take the prefix `scale_`); did you mean "
            "`scale_answer_weight_end`?",
        ),
    ],
)
def test_misspelled_scale_key_names_the_closest_key(run_exp, tiny, tmp_path, key, message):
    with pytest.raises(ScaleConfigError) as err:
        run_exp(train_config(tiny, tmp_path, **{key: "linear"}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_misspelled_key_on_the_command_line_style_arguments(patched):
    from scale_plugins.llamafactory.hparams import preflight

    with pytest.raises(
        ScaleConfigError, match="scale_normalisation: unknown SCALe key; did you mean `scale_normalization`"
    ):
        preflight(["--use_scale_loss", "true", "--scale_normalisation=token"])


@pytest.mark.parametrize(
    ("overrides", "env", "key"),
    [
        ({"stage": "pt"}, {}, "stage"),
        ({"stage": "dpo"}, {}, "stage"),
        ({"use_dft_loss": True}, {}, "use_dft_loss"),
        ({"use_asft_loss": True}, {}, "use_asft_loss"),
        ({"use_eaft_loss": True}, {}, "use_eaft_loss"),
        ({"use_hyper_parallel": True}, {}, "use_hyper_parallel"),
        ({"use_mca": True}, {}, "use_mca"),
        ({"use_kt": True}, {}, "use_kt"),
        ({"label_smoothing_factor": 0.1}, {}, "label_smoothing_factor"),
        ({}, {"USE_MCA": "1"}, "USE_MCA"),
        ({}, {"USE_RAY": "1"}, "USE_RAY"),
        ({}, {"USE_KT": "1"}, "USE_KT"),
    ],
)
def test_modes_that_bypass_the_scale_trainer_are_refused(run_exp, tiny, tmp_path, monkeypatch, overrides, env, key):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ScaleConfigError, match=f"use_scale_loss: true` cannot be combined with(.|\n)*{key}"):
        run_exp(train_config(tiny, tmp_path, **overrides))


def test_refused_modes_are_allowed_without_scale(patched, monkeypatch):
    """The refusals apply to SCALe runs only: stock LLaMA-Factory configs parse as before."""
    from scale_plugins.llamafactory.hparams import ScaleFinetuningArguments

    monkeypatch.setenv("USE_RAY", "1")
    args = ScaleFinetuningArguments(stage="dpo", use_dft_loss=True)
    assert args.use_scale_loss is False


def test_docs_list_every_key():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "llamafactory.md").read_text()
    for key in ["use_scale_loss"] + [f"scale_{opt.name}" for opt in option_fields()]:
        assert f"| `{key}` |" in docs, f"docs/llamafactory.md does not document {key}"


def test_importing_the_adapter_package_imports_no_framework():
    import subprocess
    import sys

    code = "import sys, scale_plugins.llamafactory; print(sorted(m for m in sys.modules if m.split('.')[0] in ('llamafactory', 'transformers', 'gradio')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_an_unpatched_llamafactory_rejects_the_switch(patched, tiny, tmp_path):
    """Without the patches (plain ``llamafactory-cli``) SCALe fails loudly, it never becomes cross-entropy."""
    from llamafactory.hparams import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments
    from llamafactory.hparams.training_args import TrainingArguments
    from transformers import HfArgumentParser

    stock = HfArgumentParser(
        [ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments]
    )
    with pytest.raises(ValueError, match="use_scale_loss"):
        stock.parse_dict(train_config(tiny, tmp_path))
