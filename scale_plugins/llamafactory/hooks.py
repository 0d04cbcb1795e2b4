"""How the LLaMA-Factory patches are installed: one marked, idempotent swap of a LLaMA-Factory function for ours.

Used by :mod:`.patch` (training) and :mod:`.webui` (LlamaBoard); neither imports the other's internals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

CLI_MODULE = "scale_plugins.llamafactory"  # what `python -m` runs for the launcher (the web UI's subprocesses)
MARK = "__scale_plugins_patch__"  # set on every function we install, so patching twice is a no-op


class UnsupportedLlamaFactoryError(RuntimeError):
    """The installed LLaMA-Factory lacks a private name the patches need."""


def unpatched(func: Any) -> Any:
    """The function LLaMA-Factory defined, also when a patch of ours is installed in its place."""
    return getattr(func, "__wrapped__", func) if getattr(func, MARK, False) else func


def install(owner: Any, name: str, replacement: Callable[..., Any], original: Any) -> None:
    """Put ``replacement`` (wrapping ``original``) at ``owner.name``, marked so a second install is skipped."""
    if getattr(getattr(owner, name), MARK, False):
        return
    functools.update_wrapper(replacement, original)
    setattr(replacement, MARK, True)
    setattr(owner, name, replacement)
