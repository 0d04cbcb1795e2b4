"""SCALe for Axolotl: two lines in the YAML.

.. code-block:: yaml

    plugins:
      - scale_plugins.axolotl.ScalePlugin
    loss: scale

- :class:`ScalePlugin` (``plugin.py``): the plugin Axolotl loads from ``plugins:``;
- :class:`ScaleArgs` (``args.py``): the YAML keys, derived from the core's options;
- :class:`ScaleAxolotlTrainer` (``trainer.py``): ``AxolotlTrainer`` with the SCALe loss;
- ``guard.py``: a pydantic plugin that stops ``loss: scale`` from silently becoming plain
  cross-entropy when the plugin is not listed (see docs/axolotl.md).

Names are resolved lazily (PEP 562): ``guard.py`` is imported by pydantic in every process of the
environment and must not pull in Axolotl through this package's ``__init__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .args import ScaleArgs
    from .plugin import ScalePlugin
    from .trainer import ScaleAxolotlTrainer

__all__ = ["ScaleArgs", "ScaleAxolotlTrainer", "ScalePlugin"]

_LAZY = {"ScalePlugin": ".plugin", "ScaleArgs": ".args", "ScaleAxolotlTrainer": ".trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
