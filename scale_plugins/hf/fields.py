"""The SCALe options as typed dataclass fields for ``HfArgumentParser`` configs (TRL's ``ScaleSFTConfig``,
LLaMA-Factory's ``ScaleFinetuningArguments``).

The fields are declared statically, so editors, type checkers and ``--help`` see them; their defaults, choices and
help text are read from the core's one definition (:class:`~scale_plugins.core.ScaleOptions`), and
``tests/core/test_options_schedule.py`` fails if the two ever disagree (a core option added without its field here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core import PREFIX, ScaleOptions, option_fields

_CORE = {opt.name: opt for opt in option_fields()}


def _arg(name: str) -> Any:
    """A field mirroring core option ``name``: its host default, and ``help`` / ``choices`` for argparse (a list
    option: mappings in YAML, ``entry_syntax`` strings on a command line)."""
    opt = _CORE[name]
    metadata: dict[str, Any] = {"help": f"SCALe: {opt.help}"}
    if opt.choices:
        metadata["choices"] = list(opt.choices)
    return dataclasses.field(default=opt.host_default, metadata=metadata)


@dataclass
class ScaleArguments:
    """The SCALe options, each prefixed ``scale_`` (meanings: docs/options.md, docs/concepts.md).

    Put it first among the bases of a host's config dataclass (``class C(ScaleArguments, HostConfig)``) so its
    fields come last and the host's positional arguments keep their places.
    """

    scale_think_open: str = _arg("think_open")
    scale_think_close: str = _arg("think_close")
    scale_think_close_segment: str = _arg("think_close_segment")
    scale_close_weight: float = _arg("close_weight")
    scale_schedule: str = _arg("schedule")
    scale_answer_weight_start: float = _arg("answer_weight_start")
    scale_answer_weight_end: float = _arg("answer_weight_end")
    scale_step_at: float = _arg("step_at")
    scale_normalization: str = _arg("normalization")
    scale_extra_segments: list[str] | None = _arg("extra_segments")
    scale_empty_think: str = _arg("empty_think")
    scale_on_missing_think: str = _arg("on_missing_think")
    scale_ignore_index: int = _arg("ignore_index")

    def scale_options(self) -> ScaleOptions:
        """These fields as the core's :class:`ScaleOptions` (errors name the ``scale_*`` keys)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ScaleArguments)}
        return ScaleOptions.from_dict(values, prefix=PREFIX)
