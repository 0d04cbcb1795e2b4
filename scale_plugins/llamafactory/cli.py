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
from collections.abc import Mapping

from ..core import ScaleConfigError, option_fields

PROG = "scale-llamafactory"

USAGE = f"""{PROG}: llamafactory-cli with the SCALe loss (LLaMA-Factory 0.9.5).

Usage (the same commands and arguments as llamafactory-cli):
  {PROG} train config.yaml [key=value ...]   train; `use_scale_loss: true` turns SCALe on
  {PROG} webui [--host ADDR]                 LlamaBoard with a loss selector in the Train tab (on 127.0.0.1 by
                                                         default; --host or GRADIO_SERVER_NAME to change it)
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

#: The commands that serve a Gradio UI. LLaMA-Factory's own default is every interface (0.0.0.0, or [::] with
#: GRADIO_IPV6), with no authentication, for a UI that starts training runs on paths typed into it: ours is loopback.
WEB_COMMANDS = ("webui", "webchat")
LOOPBACK = "127.0.0.1"
LOOPBACK_IPV6 = "::1"
HOST_FLAG = "--host"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def _env_enabled(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "0").lower() in ("true", "y", "1")  # as LLaMA-Factory's is_env_enabled


def web_listen_address(args: list[str], environ: Mapping[str, str]) -> tuple[str, list[str], str]:
    """Where ``webui`` / ``webchat`` listen: ``(host, the arguments without our --host flag, the start-up note)``.

    ``--host ADDR`` (ours) wins, then ``GRADIO_SERVER_NAME``, then loopback (``::1`` with ``GRADIO_IPV6=1``).
    Raises :class:`ScaleConfigError` for a ``--host`` without an address.
    """
    host, rest = None, []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == HOST_FLAG or arg.startswith(HOST_FLAG + "="):
            value = arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if not value or value.startswith("-"):
                raise ScaleConfigError(f"{HOST_FLAG}: give the address to listen on, e.g. {HOST_FLAG} 0.0.0.0")
            host = value
            i += 1 if "=" in arg else 2
            continue
        rest.append(arg)
        i += 1
    if host is None:
        host = environ.get("GRADIO_SERVER_NAME") or (
            LOOPBACK_IPV6 if _env_enabled(environ, "GRADIO_IPV6") else LOOPBACK
        )
    port = environ.get("GRADIO_SERVER_PORT") or "7860"
    where = f"{host}, port {port}" + ("" if "GRADIO_SERVER_PORT" in environ else " (or the next free port)")
    if host in _LOOPBACK_NAMES:
        note = (
            f"{PROG}: the web UI listens on {where}: this machine only. To reach it from another machine, tunnel "
            f"it (ssh -L {port}:127.0.0.1:{port} <this host>), or listen on every interface with "
            f"{HOST_FLAG} 0.0.0.0 (or GRADIO_SERVER_NAME=0.0.0.0): LlamaBoard has no authentication and starts "
            "training runs on the paths typed into it, so do that only on a trusted network or behind a proxy that "
            "authenticates."
        )
    else:
        note = (
            f"{PROG}: warning: the web UI listens on {where}, without authentication: whoever reaches "
            "this port can start training runs on paths of this machine. Put it behind a proxy that authenticates, "
            f"or drop {HOST_FLAG} / GRADIO_SERVER_NAME to listen on {LOOPBACK} only."
        )
    if _env_enabled(environ, "GRADIO_SHARE"):
        note += " GRADIO_SHARE is on: Gradio also opens a public share link to it, reachable from the internet."
    return host, rest, note


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

    if command in WEB_COMMANDS:
        try:
            host, rest, note = web_listen_address(argv[1:], os.environ)
        except ScaleConfigError as err:
            return _error(str(err))
        argv = [command, *rest]
        os.environ["GRADIO_SERVER_NAME"] = host  # LLaMA-Factory's run_web_ui / run_web_demo read it
        print(note, file=sys.stderr, flush=True)

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
