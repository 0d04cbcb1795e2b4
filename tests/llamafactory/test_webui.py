"""The web UI (LlamaBoard) Train tab, driven in-process through its own handlers (no browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scale_plugins.core import option_fields

from .helpers import step_logs

gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The top bar and the patched Train tab, built as ``create_ui`` builds them; returns (engine, blocks)."""
    import os

    from scale_plugins.llamafactory import apply_webui_patches

    apply_webui_patches()
    from llamafactory.webui import interface
    from llamafactory.webui.components import create_top
    from llamafactory.webui.engine import Engine

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("webui"))  # LlamaBoard writes its caches and configs under the cwd
    try:
        engine = Engine()
        with gr.Blocks() as blocks:
            engine.manager.add_elems("top", create_top())
            with gr.Tab("Train"):
                engine.manager.add_elems("train", interface.create_train_tab(engine))
        yield engine, blocks
    finally:
        os.chdir(cwd)


def _form(engine, tiny, output_dir: Path, **values) -> dict:
    """The values the Train tab sends to its handlers: every component's default, then a tiny local run."""
    manager = engine.manager
    data = {elem: getattr(elem, "value", None) for elem in manager.get_elem_list()}
    settings = {
        "top.lang": "en",
        "top.model_name": "Custom",
        "top.model_path": str(tiny.model),
        "top.finetuning_type": "full",
        "top.template": "chatml",
        "train.dataset_dir": str(tiny.dataset_dir),
        "train.dataset": ["cot"],
        "train.output_dir": str(output_dir),
        "train.compute_type": "fp32",
        "train.cutoff_len": 128,
        "train.batch_size": 4,
        "train.gradient_accumulation_steps": 1,
        "train.logging_steps": 1,
        "train.extra_args": json.dumps(
            {"max_steps": 2, "preprocessing_num_workers": 1, "optim": "adamw_torch", "save_strategy": "no"}
        ),
        "train.sft_loss": "scale",
        "train.scale_schedule": "linear",
        "train.scale_answer_weight_start": 0.2,
        "train.scale_answer_weight_end": 0.6,
    }
    settings.update({key.replace("__", "."): value for key, value in values.items()})
    for elem_id, value in settings.items():
        data[manager.get_elem_by_id(elem_id)] = value
    return data


def _handler_inputs(blocks, fn) -> set:
    for dependency in blocks.fns.values():
        if getattr(dependency.fn, "__func__", None) is getattr(fn, "__func__", fn):
            return set(dependency.inputs)
    raise AssertionError(f"no handler {fn}")


def test_train_tab_has_the_loss_selector_and_every_scale_option(ui):
    from scale_plugins.llamafactory.locales import ui_options
    from scale_plugins.llamafactory.webui import LOSS_CHOICES

    engine, blocks = ui
    selector = engine.manager.get_elem_by_id("train.sft_loss")
    assert [value for _, value in LOSS_CHOICES] == ["cross_entropy", "scale", "dft", "asft", "eaft"]
    assert [value for _, value in selector.choices] == [value for _, value in LOSS_CHOICES]
    assert selector.value == "cross_entropy"
    controls = {engine.manager.get_elem_by_id(f"train.scale_{opt.name}") for opt in ui_options()}
    assert {opt.name for opt in option_fields()} - {opt.name for opt in ui_options()} == {"ignore_index"}
    # the controls are inputs of every handler that reads the tab: preview, start, save, load, restore
    runner = engine.runner
    for handler in (runner.preview_train, runner.run_train, runner.save_args):
        assert controls | {selector} <= _handler_inputs(blocks, handler)


def test_preview_shows_the_scale_command(ui, tiny, tmp_path):
    engine, _ = ui
    data = _form(engine, tiny, tmp_path / "out")
    (update,) = list(engine.runner.preview_train(data))
    text = update[engine.manager.get_elem_by_id("train.output_box")]
    assert "scale-llamafactory train" in text and "llamafactory-cli" not in text
    for line in (
        "--use_scale_loss True",
        "--scale_schedule linear",
        "--scale_answer_weight_start 0.2",
        "--scale_answer_weight_end 0.6",
        "--scale_normalization sample",
        "--scale_think_open <think>",
    ):
        assert line in text


@pytest.mark.parametrize(
    ("loss", "expected", "absent"),
    [
        ("cross_entropy", {}, ("use_scale_loss", "use_dft_loss")),
        ("dft", {"use_dft_loss": True}, ("use_scale_loss",)),
        ("eaft", {"use_eaft_loss": True}, ("use_scale_loss",)),
    ],
)
def test_other_losses_do_not_set_scale_keys(ui, tiny, tmp_path, loss, expected, absent):
    engine, _ = ui
    args = engine.runner._parse_train_args(_form(engine, tiny, tmp_path / "out", train__sft_loss=loss))
    assert expected.items() <= args.items()
    assert not any(key in args for key in absent)
    assert not any(key.startswith("scale_") for key in args)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train__scale_think_close": "<think>"}, "scale_think_open/scale_think_close: the two tags must differ"),
        ({"train__training_stage": "DPO"}, "stage: SCALe is a supervised fine-tuning loss"),
        ({"train__scale_extra_segments": "perception:<p>"}, "scale_extra_segments"),
        ({"train__extra_args": '{"use_dft_loss": true}'}, "use_dft_loss"),
    ],
)
def test_invalid_settings_are_shown_naming_the_key(ui, tiny, tmp_path, values, message):
    engine, _ = ui
    with pytest.raises(gr.Error, match=message.replace("(", "\\(")):
        list(engine.runner.preview_train(_form(engine, tiny, tmp_path / "out", **values)))


def test_saved_config_keeps_the_scale_settings(ui, tiny, tmp_path):
    engine, _ = ui
    manager = engine.manager
    data = _form(
        engine, tiny, tmp_path / "out", train__config_path="scale.yaml", train__scale_extra_segments="p:<p>:</p>:0.3"
    )
    engine.runner.save_args(data)
    loaded = engine.runner.load_args("en", "scale.yaml")
    by_id = {manager.get_id_by_elem(elem): value for elem, value in loaded.items() if elem in manager._elem_to_id}
    assert by_id["train.sft_loss"] == "scale"
    assert by_id["train.scale_schedule"] == "linear"
    assert by_id["train.scale_answer_weight_start"] == 0.2
    assert by_id["train.scale_extra_segments"] == "p:<p>:</p>:0.3"
    args = engine.runner._parse_train_args(data)
    assert args["scale_extra_segments"] == ["p:<p>:</p>:0.3"]


def test_labels_in_all_five_languages_with_escaped_help(ui):
    from llamafactory.webui.locales import LOCALES

    from scale_plugins.llamafactory.locales import LANGUAGES, translated_options, ui_options

    engine, _ = ui
    assert {opt.name for opt in ui_options()} <= translated_options(), "translate every new option"
    names = ["sft_loss", "scale_tab"] + [f"scale_{opt.name}" for opt in ui_options()]
    for name in names:
        assert set(LOCALES[name]) == set(LANGUAGES)
        for lang in LANGUAGES:
            entry = LOCALES[name][lang]
            assert entry["label"]
            assert "<" not in entry.get("info", "")
    assert "&lt;think&gt;" in LOCALES["sft_loss"]["ru"]["info"]
    assert LOCALES["scale_normalization"]["en"]["info"].startswith("'sample'")  # quotes stay readable
    updates = engine.change_lang("ja")
    selector = engine.manager.get_elem_by_id("train.sft_loss")
    assert updates[selector].label == "損失関数"


@pytest.mark.slow
def test_start_trains_with_scale_in_the_training_subprocess(ui, tiny, tmp_path, monkeypatch):
    engine, _ = ui
    monkeypatch.setenv("LLAMAFACTORY_VERBOSITY", "INFO")  # the subprocess inherits it
    out = tmp_path / "run"
    updates = list(engine.runner.run_train(_form(engine, tiny, out)))
    final = updates[-1][engine.manager.get_elem_by_id("train.output_box")]
    assert "Failed" not in final, final[-3000:]
    logs = step_logs(out)
    assert [entry["scale/answer_weight"] for entry in logs] == pytest.approx([0.2, 0.4])
    saved = (out / "training_args.yaml").read_text()
    assert "use_scale_loss: true" in saved and "scale_schedule: linear" in saved
    assert "SCALe loss active on rank 0" in (out / "running_log.txt").read_text()
