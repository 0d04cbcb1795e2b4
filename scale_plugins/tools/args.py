"""The SCALe options as command-line flags (``--answer-weight-end``), shared by the ``scale-plugins`` commands."""

from __future__ import annotations

import argparse

from ..core import ScaleOptions, option_fields


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SCALe options (see docs/options.md)")
    for opt in option_fields():
        flag = "--" + opt.name.replace("_", "-")
        if opt.is_list:
            group.add_argument(flag, nargs="*", default=[], metavar=opt.entry_syntax, help=opt.help)
        else:
            group.add_argument(flag, type=opt.type, default=opt.default, choices=opt.choices, help=opt.help)


def options_from(args: argparse.Namespace) -> ScaleOptions:
    return ScaleOptions(**{o.name: getattr(args, o.name) for o in option_fields()})
