"""The SCALe options as dataclass fields for ``HfArgumentParser`` configs (TRL, LLaMA-Factory)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core import option_fields

PREFIX = "scale_"


def argument_fields(prefix: str = PREFIX) -> list[tuple[str, Any, dataclasses.Field]]:
    """``(name, type, field)`` triples for ``dataclasses.make_dataclass``, derived from the core's one definition.

    Only ``help`` and ``choices`` go into the metadata: ``HfArgumentParser`` hands it to ``argparse.add_argument``.
    ``extra_segments`` is a list: of mappings in YAML, of ``'name:<open>:</close>:w0:w1'`` strings on a command line.
    """
    fields = []
    for opt in option_fields():
        metadata: dict[str, Any] = {"help": f"SCALe: {opt.help}"}
        if opt.choices:
            metadata["choices"] = list(opt.choices)
        if opt.name == "extra_segments":
            fields.append((prefix + opt.name, list[str] | None, dataclasses.field(default=None, metadata=metadata)))
        else:
            fields.append((prefix + opt.name, opt.type, dataclasses.field(default=opt.default, metadata=metadata)))
    return fields
