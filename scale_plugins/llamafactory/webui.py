"""SCALe in LLaMA-Factory's web UI (LlamaBoard), Train tab.

What :func:`patch` changes (all private names of LLaMA-Factory 0.9.5, verified by the version guard first):

- ``interface.create_train_tab`` (the name ``create_ui`` calls): the Train tab starts with a *loss function*
  selector (cross-entropy, SCALe, and LLaMA-Factory's own DFT / ASFT / EAFT where present) and a *SCALe
  settings* accordion with one control per SCALe option, derived from the core's options. While the original
  tab is built, ``Manager.get_base_elems`` also returns these controls, so every handler that takes the tab's
  inputs gets them too: command preview, Start, save / load of configs, restoring a run's config from its
  output directory. They are registered under ``train.sft_loss`` / ``train.scale_<option>``.
- ``Runner._parse_train_args``: turns the selector into ``use_scale_loss: true`` plus every ``scale_*`` key
  (or ``use_dft_loss`` & co.), after the JSON extra arguments, and validates the result with the same
  argument class the training process uses, so a bad value or a refused combination shows in the UI at
  once, naming the key. Error pop-ups are HTML in Gradio: the message is escaped, so ``<think>`` shows.
- ``runner.gen_cmd``: the preview shows ``scale-llamafactory train``, every value quoted for the shell
  (``--scale_think_open '<think>'``: pasted into bash it must not read ``<think>`` as a redirection).
- ``control.gen_loss_plot`` (the monitor's loss plot): adds the think / answer losses and, on a second axis, their
  weights, read from ``trainer_log.jsonl`` (where the training process's patched ``LogCallback`` puts them).
- ``runner.Popen``: the training subprocess ``llamafactory-cli train <yaml>`` is started as
  ``<this python> -m scale_plugins.llamafactory train <yaml>``, so it (and its torchrun workers) is patched.
- ``locales.LOCALES``: labels and help of the new controls in the five UI languages (:mod:`.locales`).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import shlex
import sys
from typing import Any

import gradio as gr
from llamafactory.hparams.finetuning_args import FinetuningArguments
from llamafactory.webui import common, control, interface, runner
from llamafactory.webui.locales import LOCALES

from ..core import ScaleConfigError
from .hooks import CLI_MODULE, MARK, UnsupportedLlamaFactoryError, install, unpatched
from .hparams import HOST_LOSSES, PREFIX, SWITCH, ScaleFinetuningArguments, check_scale_keys, parser_fields
from .locales import LOSS_SELECTOR, SETTINGS_TAB, locales, ui_options

TAB = "train"

#: Loss selector: (shown name, value). LLaMA-Factory's own losses only where the installed version has them.
LOSS_CHOICES: list[tuple[str, str]] = [("Cross-entropy", "cross_entropy"), ("SCALe", "scale")] + [
    (name.upper(), name)
    for name, switch in HOST_LOSSES.items()
    if switch in {f.name for f in dataclasses.fields(FinetuningArguments)}
]


def _control(opt: Any) -> Any:
    """One gradio component for one SCALe option, from its type, choices and bounds in the core."""
    if opt.choices:
        return gr.Dropdown(choices=list(opt.choices), value=opt.default)
    if opt.is_list:  # one entry per line
        return gr.Textbox(value="", lines=2, max_lines=8, scale=2)
    if opt.type is float:
        if opt.bounds is not None:
            return gr.Slider(minimum=opt.bounds[0], maximum=opt.bounds[1], value=opt.default, step=0.01)
        return gr.Number(value=opt.default)
    if opt.type is int:
        return gr.Number(value=opt.default, precision=0)
    return gr.Textbox(value=opt.default)


def create_loss_controls() -> dict[str, Any]:
    """The loss selector and the SCALe settings, in the current layout context. Keys are elem names."""
    elems: dict[str, Any] = {}
    with gr.Row():
        elems[LOSS_SELECTOR] = gr.Dropdown(choices=LOSS_CHOICES, value="cross_entropy", scale=1)
    with gr.Accordion(open=False) as settings:
        # tags and choices in one row; the numbers and the multi-line lists in the next
        options = ui_options()
        numeric = [opt for opt in options if opt.type in (int, float) or opt.is_list]
        for row in ([opt for opt in options if opt not in numeric], numeric):
            with gr.Row():
                for opt in row:
                    elems[PREFIX + opt.name] = _control(opt)
    elems[SETTINGS_TAB] = settings
    elems[LOSS_SELECTOR].change(
        lambda loss: gr.Accordion(open=loss == "scale"), [elems[LOSS_SELECTOR]], [settings], queue=False
    )
    return elems


def _input_names() -> list[str]:
    return [LOSS_SELECTOR] + [PREFIX + opt.name for opt in ui_options()]


def loss_args(get: Any) -> dict[str, Any]:
    """Training arguments of the selected loss; ``get(elem_name)`` reads a control's value."""
    loss = get(LOSS_SELECTOR)
    if loss in HOST_LOSSES:
        return {HOST_LOSSES[loss]: True}
    if loss != "scale":
        return {}
    args: dict[str, Any] = {SWITCH: True}
    for opt in ui_options():
        args[PREFIX + opt.name] = opt.from_ui(get(PREFIX + opt.name))
    return args


def validate_train_args(args: dict[str, Any]) -> None:
    """Check the SCALe part of a web UI config with the class the training process parses it with."""
    from transformers import HfArgumentParser

    if not args.get(SWITCH) and not any(key.startswith(PREFIX) for key in args):
        return
    check_scale_keys(args, parser_fields())
    HfArgumentParser(ScaleFinetuningArguments).parse_dict(args, allow_extra_keys=True)


def shell_command(args: dict[str, Any]) -> str:
    """The preview: LLaMA-Factory's layout (one ``--key value`` per line, a bash block), each value shell-quoted."""
    lines = ["scale-llamafactory train "]
    for key, value in common._clean_cmd(args).items():
        if isinstance(value, dict):
            text = shlex.quote(json.dumps(value, ensure_ascii=False))
        elif isinstance(value, list):
            text = " ".join(shlex.quote(str(item)) for item in value)
        else:
            text = shlex.quote(str(value))
        lines.append(f"    --{key} {text} ")
    return "```bash\n" + "\\\n".join(lines) + "\n```"


#: trainer_log.jsonl keys the loss plot adds: (key, label, on the weight axis)
PLOTTED = (
    ("scale/think_loss", "think loss", False),
    ("scale/answer_loss", "answer loss", False),
    ("scale/think_weight", "think weight", True),
    ("scale/answer_weight", "answer weight", True),
    ("scale/close_loss", "closer loss", False),  # think_close_segment: own
    ("scale/close_weight", "closer weight", True),
)


def _patch_loss_plot() -> None:
    original = unpatched(control.gen_loss_plot)

    def gen_loss_plot(trainer_log: list[dict[str, Any]]) -> Any:
        fig = original(trainer_log)
        entries = [log for log in trainer_log if log.get("loss") and "scale/answer_weight" in log]
        if not entries:
            return fig
        ax = fig.axes[0]
        steps = [log["current_steps"] for log in entries]
        weights = ax.twinx()
        for (key, label, is_weight), color in zip(
            PLOTTED, ("#d62728", "#2ca02c", "#d62728", "#2ca02c", "#1f77b4", "#1f77b4"), strict=True
        ):
            values = [log.get(key) for log in entries]
            if any(v is None for v in values):
                continue
            target = weights if is_weight else ax
            target.plot(steps, values, color=color, linestyle="--" if is_weight else "-", label=label)
        weights.set_ylim(0.0, 1.0)
        weights.set_ylabel("SCALe weight")
        handles, labels = [], []
        for axis in (ax, weights):
            axis_handles, axis_labels = axis.get_legend_handles_labels()
            handles += axis_handles
            labels += axis_labels
        ax.legend(handles, labels, fontsize="small")
        return fig

    install(control, "gen_loss_plot", gen_loss_plot, original)


def _patch_train_tab() -> None:
    original = unpatched(interface.create_train_tab)

    def create_train_tab(engine: Any) -> dict[str, Any]:
        controls = create_loss_controls()
        inputs = {controls[name] for name in _input_names()}
        manager = engine.manager
        base_elems = manager.get_base_elems
        # create_train_tab wires its handlers to get_base_elems() + its own inputs: ours join them there.
        manager.get_base_elems = lambda: base_elems() | inputs
        try:
            elem_dict = original(engine)
        finally:
            del manager.get_base_elems
        clash = set(elem_dict) & set(controls)
        if clash:
            raise UnsupportedLlamaFactoryError(f"the Train tab already has elements named {sorted(clash)}")
        elem_dict.update(controls)
        return elem_dict

    install(interface, "create_train_tab", create_train_tab, original)


def _patch_runner() -> None:
    Runner = runner.Runner
    original_parse = unpatched(Runner._parse_train_args)

    def _parse_train_args(self: Any, data: dict[Any, Any]) -> dict[str, Any]:
        args = original_parse(self, data)
        args.update(loss_args(lambda name: data[self.manager.get_elem_by_id(f"{TAB}.{name}")]))
        try:
            validate_train_args(args)
        except (ScaleConfigError, ValueError) as err:
            raise gr.Error(html.escape(str(err), quote=False)) from None  # the pop-up renders HTML
        return args

    install(Runner, "_parse_train_args", _parse_train_args, original_parse)

    original_gen_cmd = unpatched(runner.gen_cmd)

    def gen_cmd(args: dict[str, Any]) -> str:
        if os.name == "nt":  # PowerShell quoting differs: LLaMA-Factory's own preview, our command name
            return original_gen_cmd(args).replace("llamafactory-cli train", "scale-llamafactory train", 1)
        return shell_command(args)

    install(runner, "gen_cmd", gen_cmd, original_gen_cmd)

    real_popen = runner.Popen
    if not getattr(real_popen, MARK, False):

        class Popen(real_popen):  # type: ignore[misc, valid-type]
            """``llamafactory-cli train`` -> ``<this python> -m scale_plugins.llamafactory train``."""

            def __init__(self, args: Any, *rest: Any, **kwargs: Any):
                args = list(args)
                if args[:2] == ["llamafactory-cli", "train"]:
                    args[0:1] = [sys.executable, "-m", CLI_MODULE]
                super().__init__(args, *rest, **kwargs)

        setattr(Popen, MARK, True)
        runner.Popen = Popen


def _patch_locales() -> None:
    for name, entry in locales().items():
        if name in LOCALES and LOCALES[name] != entry:
            raise UnsupportedLlamaFactoryError(f"LLaMA-Factory's web UI already has a label named {name!r}")
        LOCALES[name] = entry


def patch() -> None:
    """Apply the web UI patches (call through :func:`scale_plugins.llamafactory.patch.apply_webui_patches`)."""
    _patch_locales()
    _patch_train_tab()
    _patch_runner()
    _patch_loss_plot()
