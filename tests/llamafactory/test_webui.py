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
        "--scale_empty_think ignore",
        "--scale_think_open '<think>'",
    ):
        assert line in text


def test_preview_command_is_shell_safe(ui, tiny, tmp_path):
    """Pasted into bash, the previewed command passes every value literally (``<think>`` is no redirection)."""
    import shlex
    import subprocess

    engine, _ = ui
    extra = "p:<p>:</p>:0.3\nq:<q x='1'>:</q>:0.2"
    data = _form(engine, tiny, tmp_path / "out dir", train__scale_extra_segments=extra)
    (update,) = list(engine.runner.preview_train(data))
    text = update[engine.manager.get_elem_by_id("train.output_box")]
    command = text.removeprefix("```bash\n").removesuffix("\n```")
    words = shlex.split(command.replace("\\\n", ""))  # bash drops the line continuations
    assert words[:2] == ["scale-llamafactory", "train"]
    value = {word: words[i + 1] for i, word in enumerate(words[:-1]) if word.startswith("--")}
    assert value["--scale_think_open"] == "<think>" and value["--scale_think_close"] == "</think>"
    assert value["--output_dir"].endswith("out dir")
    # what bash itself passes to the command (printf prints one argument per line)
    printed = subprocess.run(
        ["bash", "-c", command.replace("scale-llamafactory train", "printf '%s\\n'", 1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert printed == words[2:]
    i = printed.index("--scale_extra_segments")
    assert printed[i + 1 : i + 3] == ["p:<p>:</p>:0.3", "q:<q x='1'>:</q>:0.2"]
    assert not list(tmp_path.glob("think*")), "bash read a tag as a redirection"


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


def test_error_popup_is_escaped_html(ui, tiny, tmp_path):
    """The pop-up renders its message as HTML: the tags in it must be escaped to show (not vanish as HTML tags)."""
    import html

    engine, _ = ui
    with pytest.raises(gr.Error) as err:
        list(engine.runner.preview_train(_form(engine, tiny, tmp_path / "out", train__scale_extra_segments="p:<p>")))
    shown = err.value.message
    assert "<" not in shown and "&lt;p&gt;" in shown
    assert html.unescape(shown) == (
        "scale_extra_segments: 'p:<p>' must look like 'name:<open>:</close>[:weight_start[:weight_end]]'"
    )


def test_misspelled_scale_key_in_extra_arguments_is_shown(ui, tiny, tmp_path):
    engine, _ = ui
    values = {"train__extra_args": '{"max_steps": 2, "scale_scheduel": "linear"}'}
    with pytest.raises(gr.Error, match="scale_scheduel: unknown SCALe key; did you mean `scale_schedule`\\?"):
        list(engine.runner.preview_train(_form(engine, tiny, tmp_path / "out", **values)))


def test_empty_think_is_a_dropdown_of_the_core_choices(ui, tiny, tmp_path):
    from llamafactory.webui.locales import LOCALES

    engine, _ = ui
    control = engine.manager.get_elem_by_id("train.scale_empty_think")
    assert isinstance(control, gr.Dropdown)
    assert [value for _, value in control.choices] == ["ignore", "think"] and control.value == "ignore"
    assert {lang: entry["label"] for lang, entry in LOCALES["scale_empty_think"].items()}["en"] == "Empty think blocks"
    args = engine.runner._parse_train_args(_form(engine, tiny, tmp_path / "out", train__scale_empty_think="think"))
    assert args["scale_empty_think"] == "think"


def test_closing_tag_setting_is_a_dropdown_that_reaches_the_training_args(ui, tiny, tmp_path):
    from llamafactory.webui.locales import LOCALES

    engine, _ = ui
    control = engine.manager.get_elem_by_id("train.scale_think_close_segment")
    assert isinstance(control, gr.Dropdown)
    assert [value for _, value in control.choices] == ["think", "answer", "own"] and control.value == "answer"
    weight = engine.manager.get_elem_by_id("train.scale_close_weight")
    assert isinstance(weight, gr.Slider) and weight.value == 0.5 and (weight.minimum, weight.maximum) == (0.0, 1.0)
    own = engine.runner._parse_train_args(
        _form(engine, tiny, tmp_path / "out", train__scale_think_close_segment="own", train__scale_close_weight=0.25)
    )
    assert (own["scale_think_close_segment"], own["scale_close_weight"]) == ("own", 0.25)
    labels = {lang: entry["label"] for lang, entry in LOCALES["scale_think_close_segment"].items()}
    assert labels["en"] == "Closing tag trained as" and len(set(labels.values())) == 5
    args = engine.runner._parse_train_args(
        _form(engine, tiny, tmp_path / "out", train__scale_think_close_segment="think")
    )
    assert args["scale_think_close_segment"] == "think"
    (update,) = list(
        engine.runner.preview_train(_form(engine, tiny, tmp_path / "out", train__scale_think_close_segment="think"))
    )
    assert "--scale_think_close_segment think" in update[engine.manager.get_elem_by_id("train.output_box")]


def test_loss_plot_shows_the_scale_losses_and_weights(ui):
    """The monitor's plot (from trainer_log.jsonl) gets the think / answer losses and, on a second axis, the weights."""
    from llamafactory.webui import control

    log = [
        {"current_steps": step, "loss": 2.0 - step / 10, "scale/think_loss": 2.5 - step / 10,
         "scale/answer_loss": 1.5 - step / 20, "scale/think_weight": 0.9 - step / 10,
         "scale/answer_weight": 0.1 + step / 10}
        for step in (1, 2, 3)
    ]  # fmt: skip
    fig = control.gen_loss_plot(log)
    loss_axis, weight_axis = fig.axes
    assert [line.get_label() for line in loss_axis.lines] == ["original", "smoothed", "think loss", "answer loss"]
    assert [line.get_label() for line in weight_axis.lines] == ["think weight", "answer weight"]
    assert list(weight_axis.lines[1].get_ydata()) == pytest.approx([0.2, 0.3, 0.4])
    assert weight_axis.get_ylim() == (0.0, 1.0)
    legend = [text.get_text() for text in loss_axis.get_legend().get_texts()]
    assert legend == ["original", "smoothed", "think loss", "answer loss", "think weight", "answer weight"]
    own = control.gen_loss_plot([{**entry, "scale/close_loss": 0.3, "scale/close_weight": 0.5} for entry in log])
    assert [line.get_label() for line in own.axes[0].lines][-1] == "closer loss"
    assert [line.get_label() for line in own.axes[1].lines] == ["think weight", "answer weight", "closer weight"]
    stock = control.gen_loss_plot([{"current_steps": 1, "loss": 2.0}, {"current_steps": 2, "loss": 1.0}])
    assert len(stock.axes) == 1  # a run without SCALe: LLaMA-Factory's plot


def test_the_running_log_line_adds_the_closer_segment_where_the_run_has_it():
    from scale_plugins.llamafactory.patch import shown_line

    base = {"scale/think_loss": 1.0, "scale/answer_loss": 0.5, "scale/think_weight": 0.9, "scale/answer_weight": 0.1}
    assert shown_line(base) == (
        "{'scale/think_loss': 1.0000, 'scale/answer_loss': 0.5000, 'scale/think_weight': 0.9000, "
        "'scale/answer_weight': 0.1000}"
    )
    own = shown_line({**base, "scale/close_loss": 0.25, "scale/close_weight": 0.5})
    assert own is not None and own.endswith(", 'scale/close_loss': 0.2500, 'scale/close_weight': 0.5000}")
    assert shown_line({"scale/think_loss": 1.0}) is None


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
    assert [entry["scale/answer_weight"] for entry in logs] == pytest.approx([0.2, 0.6])  # first and last step
    saved = (out / "training_args.yaml").read_text()
    assert "use_scale_loss: true" in saved and "scale_schedule: linear" in saved
    assert "SCALe loss active on rank 0" in (out / "running_log.txt").read_text()


def test_a_list_option_is_a_text_box_read_line_by_line_by_its_kind(monkeypatch):
    """The controls and the training arguments follow each option's kind in the core, not its name: a list option
    the web UI has never heard of gets a multi-line text box and one entry per line."""
    from scale_plugins.core.options import OptionField
    from scale_plugins.llamafactory import webui

    extra = OptionField("stop_tags", list, (), "Tags that end a trace, one per line.", None, entry_syntax="<tag>")
    monkeypatch.setattr(webui, "ui_options", lambda: [*option_fields(), extra])
    with gr.Blocks():
        box = webui._control(extra)
        slider = webui._control(next(o for o in option_fields() if o.name == "answer_weight_end"))
    assert isinstance(box, gr.Textbox) and box.lines == 2
    assert isinstance(slider, gr.Slider) and (slider.minimum, slider.maximum) == (0.0, 1.0)
    values = {webui.LOSS_SELECTOR: "scale", "scale_stop_tags": " <a>\n\n<b>\n", "scale_ignore_index": -100.0}
    args = webui.loss_args(values.get)
    assert args["scale_stop_tags"] == ["<a>", "<b>"] and args["scale_extra_segments"] is None
    assert args["scale_ignore_index"] == -100 and type(args["scale_ignore_index"]) is int
