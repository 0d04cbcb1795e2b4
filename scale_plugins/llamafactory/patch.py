"""How SCALe gets into LLaMA-Factory, which has no plugin mechanism: a few targeted patches, in every process.

Training (:func:`apply_training_patches`, in every process that trains):

1. ``llamafactory.hparams.parser``: :class:`~.hparams.ScaleFinetuningArguments` replaces
   ``FinetuningArguments`` in the argument lists its ``HfArgumentParser`` is built from, so the YAML keys
   ``use_scale_loss`` / ``scale_*`` are parsed and validated.
2. ``llamafactory.train.tuner``: ``get_train_args`` also checks the combinations SCALe refuses that need
   the model / training arguments (``use_kt``, label smoothing); ``run_exp`` checks the config before
   dispatching (Ray runs ``_training_function`` in workers of its own, which have no patches).
3. ``llamafactory.train.sft.workflow``: the name ``CustomSeq2SeqTrainer`` that ``run_sft`` builds its trainer
   with becomes :func:`~.trainer.sft_trainer` (``ScaleSeq2SeqTrainer`` when ``use_scale_loss`` is on).
4. ``llamafactory.launcher``: multi-process training re-executes ``launcher.py`` itself under ``torchrun``
   (``FORCE_TORCHRUN=1``, several GPUs, DeepSpeed from the web UI). The launcher's ``subprocess`` is given a
   stand-in whose ``run`` rewrites that one command: ``torchrun ... <launcher.py> args`` becomes
   ``python -m torch.distributed.run ... -m scale_plugins.llamafactory.worker args``, so every worker starts in
   our module, applies these patches and then runs LLaMA-Factory's ``run_exp``. ``sys.executable`` also
   makes it independent of whether the environment's ``bin`` is on ``PATH``.

Web UI (:func:`apply_webui_patches`, in the ``webui`` process): see :mod:`.webui`; its training subprocess
(``llamafactory-cli train``) is started as ``python -m scale_plugins.llamafactory train`` instead.

Nothing is installed into the environment (no ``.pth`` file, no ``sitecustomize``): plain ``llamafactory-cli``
stays stock, and a process started without the patches rejects ``use_scale_loss`` as an unknown key instead
of silently training cross-entropy. All patched names are private to LLaMA-Factory, so the version guard
(:func:`check_llamafactory`) verifies each of them, and what the patched functions reference, before any
patch is applied.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ..versions import warn_if_untested
from .hooks import UnsupportedLlamaFactoryError, install, unpatched

SUPPORTED_VERSION = "0.9.5"
WORKER_MODULE = "scale_plugins.llamafactory.worker"

# (module, attribute path) pairs that must exist ...
_TRAINING_NAMES: tuple[tuple[str, str], ...] = (
    ("llamafactory.hparams.parser", "_TRAIN_ARGS"),
    ("llamafactory.hparams.parser", "_INFER_ARGS"),
    ("llamafactory.hparams.parser", "_EVAL_ARGS"),
    ("llamafactory.hparams.parser", "_TRAIN_MCA_ARGS"),
    ("llamafactory.hparams.parser", "_parse_args"),
    ("llamafactory.hparams.parser", "read_args"),
    ("llamafactory.hparams.finetuning_args", "FinetuningArguments"),
    ("llamafactory.hparams.model_args", "ModelArguments"),
    ("llamafactory.extras.constants", "IGNORE_INDEX"),
    ("llamafactory.train.tuner", "run_exp"),
    ("llamafactory.train.tuner", "get_train_args"),
    ("llamafactory.train.tuner", "_training_function"),
    ("llamafactory.train.sft.workflow", "run_sft"),
    ("llamafactory.train.sft.workflow", "CustomSeq2SeqTrainer"),
    ("llamafactory.train.sft.trainer", "CustomSeq2SeqTrainer"),
    ("llamafactory.launcher", "launch"),
    ("llamafactory.launcher", "subprocess"),
    ("llamafactory.train.callbacks", "LogCallback.on_log"),
)
# ... and (module, function path, global or attribute name the function must use): the patches only work if
# the function looks these names up when it runs.
_TRAINING_USES: tuple[tuple[str, str, str], ...] = (
    ("llamafactory.train.tuner", "_training_function", "get_train_args"),
    ("llamafactory.train.tuner", "_training_function", "run_sft"),
    ("llamafactory.train.sft.workflow", "run_sft", "CustomSeq2SeqTrainer"),
    ("llamafactory.launcher", "launch", "subprocess"),
    ("llamafactory.launcher", "launch", "__file__"),
    ("llamafactory.train.callbacks", "LogCallback.on_log", "thread_pool"),
    ("llamafactory.train.callbacks", "LogCallback.on_log", "_write_log"),
    ("llamafactory.train.callbacks", "LogCallback.on_log", "webui_mode"),
)
_WEBUI_NAMES: tuple[tuple[str, str], ...] = (
    ("llamafactory.webui.interface", "create_ui"),
    ("llamafactory.webui.interface", "create_train_tab"),
    ("llamafactory.webui.components.train", "create_train_tab"),
    ("llamafactory.webui.manager", "Manager.get_base_elems"),
    ("llamafactory.webui.manager", "Manager.get_elem_by_id"),
    ("llamafactory.webui.runner", "Runner._parse_train_args"),
    ("llamafactory.webui.runner", "Runner._initialize"),
    ("llamafactory.webui.runner", "Runner._launch"),
    ("llamafactory.webui.runner", "Popen"),
    ("llamafactory.webui.runner", "gen_cmd"),
    ("llamafactory.webui.common", "_clean_cmd"),
    ("llamafactory.webui.control", "gen_loss_plot"),
    ("llamafactory.webui.locales", "LOCALES"),
)
_WEBUI_USES: tuple[tuple[str, str, str], ...] = (
    ("llamafactory.webui.interface", "create_ui", "create_train_tab"),
    ("llamafactory.webui.components.train", "create_train_tab", "get_base_elems"),
    ("llamafactory.webui.runner", "Runner._launch", "Popen"),
    ("llamafactory.webui.runner", "Runner._launch", "_parse_train_args"),
    ("llamafactory.webui.runner", "Runner._preview", "gen_cmd"),
    ("llamafactory.webui.runner", "Runner._preview", "_initialize"),
    ("llamafactory.webui.control", "get_trainer_info", "gen_loss_plot"),
)


def _resolve(module: str, path: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _installed_version() -> str:
    try:
        from llamafactory.extras.env import VERSION
    except Exception:  # noqa: BLE001 - reported as unknown; the name checks below say what is missing
        return "unknown"
    return VERSION


def check_llamafactory(
    names: Sequence[tuple[str, str]] = _TRAINING_NAMES, uses: Sequence[tuple[str, str, str]] = _TRAINING_USES
) -> None:
    """The version guard: raise :class:`UnsupportedLlamaFactoryError` if anything the patches rely on is missing."""
    missing = []
    for module, path in names:
        try:
            _resolve(module, path)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{path}")
    for module, path, name in uses:
        try:
            code = unpatched(_resolve(module, path)).__code__
        except (ImportError, AttributeError):
            missing.append(f"{module}.{path}")
            continue
        if name not in code.co_names:
            missing.append(f"{module}.{path} (no longer uses {name!r})")
    if missing:
        raise UnsupportedLlamaFactoryError(
            f"scale-llamafactory supports LLaMA-Factory {SUPPORTED_VERSION} (installed: {_installed_version()}); "
            f"the SCALe patches need these private names, which this version lacks or uses differently:\n  - "
            + "\n  - ".join(missing)
            + f"\nInstall the supported version: pip install 'llamafactory=={SUPPORTED_VERSION}' "
            "(or scale-plugins[llamafactory])."
        )
    version = _installed_version()
    # outside the tested range (scale_plugins.versions): one warning, then on (every name it patches is present)
    warn_if_untested(
        "llamafactory",
        lambda message: _logger().warning(message + " Every name it patches is present, continuing."),
        installed={"llamafactory": None if version == "unknown" else version},
    )


def _logger() -> logging.Logger:
    from llamafactory.extras import logging as lf_logging

    return lf_logging.get_logger("llamafactory.scale_plugins")


class _ForwardToLlamaFactory(logging.Handler):
    """Shows the core's ``scale_plugins`` log records through LLaMA-Factory's logger (console and web UI log)."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger("llamafactory.scale_plugins")
        if target.isEnabledFor(record.levelno):  # LLAMAFACTORY_VERBOSITY applies to ours too
            target.handle(record)


def _route_core_logs() -> None:
    core = logging.getLogger("scale_plugins")
    if not any(isinstance(h, _ForwardToLlamaFactory) for h in core.handlers):
        _logger()  # configures LLaMA-Factory's handler
        core.addHandler(_ForwardToLlamaFactory())
        if core.level == logging.NOTSET or core.level > logging.INFO:
            core.setLevel(logging.INFO)


# -- training -------------------------------------------------------------------------------------------------


def _swap_finetuning_arguments() -> None:
    from llamafactory.hparams import parser
    from llamafactory.hparams.finetuning_args import FinetuningArguments

    from .hparams import ScaleFinetuningArguments

    for lst in (parser._TRAIN_ARGS, parser._INFER_ARGS, parser._EVAL_ARGS, parser._TRAIN_MCA_ARGS):
        for i, cls in enumerate(lst):
            if cls is FinetuningArguments:
                lst[i] = ScaleFinetuningArguments


def _patch_tuner() -> None:
    from llamafactory.hparams import parser
    from llamafactory.train import tuner

    from .hparams import check_train_args, preflight

    original_get_train_args = unpatched(tuner.get_train_args)
    original_run_exp = unpatched(tuner.run_exp)

    def get_train_args(args: Any = None) -> Any:
        parsed = original_get_train_args(args)
        model_args, _, training_args, finetuning_args, _ = parsed
        check_train_args(model_args, training_args, finetuning_args)
        return parsed

    def run_exp(args: Any = None, callbacks: Any = None) -> None:
        args = parser.read_args(args)
        if not ("-h" in args or "--help" in args):
            preflight(args)
        original_run_exp(args, callbacks)

    install(tuner, "get_train_args", get_train_args, original_get_train_args)
    install(tuner, "run_exp", run_exp, original_run_exp)


def _patch_sft_workflow() -> None:
    from llamafactory.train.sft import workflow

    from .trainer import sft_trainer

    if workflow.CustomSeq2SeqTrainer is not sft_trainer:
        workflow.CustomSeq2SeqTrainer = sft_trainer


def rewrite_torchrun_command(cmd: Sequence[str], launcher_file: str) -> list[str]:
    """``torchrun <options> <launcher_file> <args>`` -> ``python -m torch.distributed.run <options> -m worker <args>``."""
    cmd = list(cmd)
    if launcher_file not in cmd:
        raise UnsupportedLlamaFactoryError(
            f"LLaMA-Factory's launcher started {cmd!r}, which does not run its launcher file {launcher_file}; "
            f"SCALe cannot reach the workers. Supported: LLaMA-Factory {SUPPORTED_VERSION}."
        )
    i = cmd.index(launcher_file)
    cmd[i : i + 1] = ["-m", WORKER_MODULE]
    if cmd[0] == "torchrun":
        cmd[0:1] = [sys.executable, "-m", "torch.distributed.run"]
    return cmd


class _LauncherSubprocess:
    """Stands in for the ``subprocess`` module inside ``llamafactory.launcher`` (see the module docstring)."""

    def __init__(self, real: Any, launcher_file: str):
        self._real = real
        self._launcher_file = launcher_file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def run(self, cmd: Any, *args: Any, **kwargs: Any) -> Any:
        return self._real.run(rewrite_torchrun_command(cmd, self._launcher_file), *args, **kwargs)


def _patch_launcher() -> None:
    from llamafactory import launcher

    if not isinstance(launcher.subprocess, _LauncherSubprocess):
        launcher.subprocess = _LauncherSubprocess(launcher.subprocess, launcher.__file__)


#: The metrics of a log entry that LogCallback adds to trainer_log.jsonl (it writes a fixed set of keys otherwise).
LOGGED_PREFIXES = ("scale/", "eval_scale/")
#: ... and shows in the web UI's running log, next to its own loss line.
_SHOWN = ("scale/think_loss", "scale/answer_loss", "scale/think_weight", "scale/answer_weight")
#: ... and, where the run has it (think_close_segment: own), the closer's segment
_SHOWN_IF_THERE = ("scale/close_loss", "scale/close_weight")


def shown_line(metrics: dict[str, Any]) -> str | None:
    """The line the web UI's running log gets for one log entry's ``scale/*`` metrics (None without SCALe's)."""
    if not all(key in metrics for key in _SHOWN):
        return None
    shown = _SHOWN + tuple(key for key in _SHOWN_IF_THERE if key in metrics)
    return "{" + ", ".join(f"'{key}': {metrics[key]:.4f}" for key in shown) + "}"


class _AddToWrittenLog:
    """Stands in for ``LogCallback.thread_pool`` during one ``on_log``: the line it writes gets ``extra`` too."""

    def __init__(self, pool: Any, extra: dict[str, Any]):
        self._pool = pool
        self._extra = extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def submit(self, fn: Any, output_dir: Any, logs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return self._pool.submit(fn, output_dir, {**logs, **self._extra}, *args, **kwargs)


def _patch_log_callback() -> None:
    """``trainer_log.jsonl`` (what the web UI plots) and the web UI's log get the ``scale/*`` metrics."""
    from llamafactory.train.callbacks import LogCallback

    original = unpatched(LogCallback.on_log)

    def on_log(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        entry = state.log_history[-1] if state.log_history else {}
        extra = {key: value for key, value in entry.items() if key.startswith(LOGGED_PREFIXES)}
        pool = self.thread_pool
        if extra and pool is not None:
            self.thread_pool = _AddToWrittenLog(pool, extra)
        try:
            result = original(self, args, state, control, **kwargs)
        finally:
            if self.thread_pool is not pool and isinstance(self.thread_pool, _AddToWrittenLog):
                self.thread_pool = pool
        line = shown_line(extra)
        if self.webui_mode and args.should_save and "loss" in entry and line is not None:
            _logger().info(line)
        return result

    install(LogCallback, "on_log", on_log, original)


_applied: set[str] = set()


def apply_training_patches() -> None:
    """Patch LLaMA-Factory's argument parsing, SFT trainer and torchrun launch (idempotent)."""
    if "training" in _applied:
        return
    check_llamafactory(_TRAINING_NAMES, _TRAINING_USES)
    _route_core_logs()
    _swap_finetuning_arguments()
    _patch_tuner()
    _patch_sft_workflow()
    _patch_launcher()
    _patch_log_callback()
    _applied.add("training")


def apply_webui_patches() -> None:
    """Patch the web UI (Train tab, its command preview and training subprocess); implies the training patches."""
    apply_training_patches()
    if "webui" in _applied:
        return
    check_llamafactory(_WEBUI_NAMES, _WEBUI_USES)
    from . import webui

    webui.patch()
    _applied.add("webui")
