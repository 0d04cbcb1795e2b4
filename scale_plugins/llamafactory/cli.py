"""``scale-llamafactory``: ``llamafactory-cli`` with SCALe patched into every process it starts.

Same commands and arguments as ``llamafactory-cli`` (``train``, ``webui``, ``chat``, ``export``, ``api``,
``webchat``, ``env``, ``version``); before handing over to LLaMA-Factory's launcher it applies the patches of
:mod:`.patch` (the web UI ones for ``webui``), and for ``train`` it checks the SCALe keys of the config first,
so a bad value is reported once, before torchrun starts any worker.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ..core import ScaleConfigError, option_fields

PROG = "scale-llamafactory"

USAGE = f"""{PROG}: llamafactory-cli with the SCALe loss (LLaMA-Factory 0.9.5).

Usage (the same commands and arguments as llamafactory-cli):
  {PROG} train config.yaml [key=value ...]   train; `use_scale_loss: true` turns SCALe on
  {PROG} webui                               LlamaBoard, with a loss selector in the Train tab
  {PROG} chat | export | api | webchat ...   as llamafactory-cli (SCALe keys in the YAML are accepted)
  {PROG} env | version                       as llamafactory-cli
Multi-GPU / DeepSpeed: FORCE_TORCHRUN=1 {PROG} train config.yaml (every torchrun worker gets SCALe).
SCALe keys: {{keys}}.
Docs: docs/llamafactory.md"""


def _usage() -> str:
    # the keys from the core's one definition (no LLaMA-Factory import: `help` stays fast)
    keys = ["use_scale_loss"] + [f"scale_{opt.name}" for opt in option_fields() if opt.name != "ignore_index"]
    lines, line = [], ""
    for key in keys:
        if line and len(line) + len(key) > 100:
            lines.append(line.rstrip())
            line = "  "
        line += key + ", "
    return USAGE.replace("{keys}", "\n".join(lines + [line.rstrip(", ")]))


_NO_PATCH_COMMANDS = ("env", "version")


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else "help"
    if command in ("help", "-h", "--help"):
        print(_usage())
        return 0
    if os.getenv("USE_V1", "0").lower() in ("true", "y", "1"):
        return _error("USE_V1=1 selects LLaMA-Factory's v1 engine, which SCALe does not patch; unset USE_V1.")

    from .patch import UnsupportedLlamaFactoryError, apply_training_patches, apply_webui_patches

    try:
        if command == "webui":
            apply_webui_patches()
        elif command not in _NO_PATCH_COMMANDS:
            apply_training_patches()
        if command == "train" and not ({"-h", "--help"} & set(argv[1:])):
            from .hparams import preflight

            sys.argv = [PROG, *argv[1:]]  # where LLaMA-Factory's read_args looks for the config
            preflight()
    except (ScaleConfigError, UnsupportedLlamaFactoryError) as err:
        return _error(str(err))

    from llamafactory import launcher

    sys.argv = [PROG, *argv]  # the launcher pops the command from sys.argv[1]
    try:
        launcher.launch()
    except (ScaleConfigError, UnsupportedLlamaFactoryError) as err:
        return _error(str(err))
    except subprocess.CalledProcessError as err:  # torchrun: the workers printed their own errors
        return _error(f"distributed training failed (exit code {err.returncode}); see the workers' output above")
    return 0
