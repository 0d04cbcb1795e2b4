"""Stops `loss: scale` from silently training plain cross-entropy when the plugin is not active.

Axolotl drops config keys its schema does not know, and the schema only knows ``loss`` and the
``scale_*`` keys when :class:`~scale_plugins.axolotl.ScalePlugin` is listed under ``plugins:`` and
imports. Nothing of ours runs in Axolotl without that listing, except this: a pydantic plugin
(entry-point group ``pydantic``, declared in pyproject.toml), which pydantic loads in every process
of an environment where scale-plugins is installed. It watches the validation of Axolotl's config
model and raises :class:`ScalePluginNotActiveError` when the input asks for SCALe (``loss: scale`` or
a ``scale_*`` key) but the schema being validated lacks :class:`~scale_plugins.axolotl.args.ScaleArgs`.

Axolotl validates every config with that model (``axolotl.utils.config.validate_config``: the
``train``, ``preprocess``, ``evaluate`` commands, ``load_cfg`` from Python, each process of a
multi-GPU launch, Ray workers), so ``axolotl train`` stops before loading a model.

This module must stay importable with the standard library alone: pydantic imports it while building
its first validator, possibly in the middle of importing Axolotl or transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PLUGIN_PATH = "scale_plugins.axolotl.ScalePlugin"
#: Axolotl's config model, by class name inside the ``axolotl`` package (0.19: ``axolotl.utils.schemas.config``):
#: matched by name and package, not by module path, so that a release that moves the class keeps the guard on.
_AXOLOTL_CONFIG = ("axolotl", "AxolotlInputConfig")
_SCALE_ARGS = ("scale_plugins.axolotl.args", "ScaleArgs")


class ScalePluginNotActiveError(ValueError):
    """``loss: scale`` (or a ``scale_*`` key) in a config validated without the SCALe plugin."""


def _in_mro(cls: Any, package_and_name: tuple[str, str]) -> bool:
    """Whether a class of that name, defined in that package or a module below it, is among ``cls``'s bases."""
    package, name = package_and_name
    for c in getattr(cls, "__mro__", ()):
        module = getattr(c, "__module__", None) or ""
        if getattr(c, "__name__", None) == name and (module == package or module.startswith(package + ".")):
            return True
    return False


def requested_scale_keys(data: Mapping[str, Any], known: Any = ()) -> list[str]:
    """The keys of a raw config that ask for SCALe (``known``: the schema's own fields, never ours)."""
    keys = [
        key
        for key in data
        if isinstance(key, str) and key.startswith("scale_") and key not in known and data[key] is not None
    ]
    loss = data.get("loss")
    if isinstance(loss, str) and loss.strip().lower() == "scale":  # `SCALE` too: it must not slip through either
        keys.insert(0, "loss")
    return keys


def check_scale_plugin_active(data: Any, known: Any = ()) -> None:
    """Raise if ``data`` (a raw Axolotl config) asks for SCALe; called only for schemas without ScaleArgs."""
    if not isinstance(data, Mapping):
        return
    keys = requested_scale_keys(data, known)
    if not keys:
        return
    plugins = data.get("plugins") or []
    listed = any(isinstance(p, str) and p.startswith("scale_plugins.axolotl") for p in plugins)
    reason = (
        f"'{PLUGIN_PATH}' is listed under `plugins:` but Axolotl could not load it (look for "
        "'Failed to load plugin' above: is scale-plugins installed in this environment, and does it import?)"
        if listed
        else "the SCALe plugin is not listed under `plugins:`"
    )
    asked = ", ".join("loss: scale" if key == "loss" else key for key in keys)
    raise ScalePluginNotActiveError(
        f"The config asks for SCALe ({asked}) but {reason}. Axolotl would drop these keys and silently train "
        f"plain cross-entropy, so training stops here. Add to your config:\n\n"
        f"plugins:\n  - {PLUGIN_PATH}\n"
    )


class _ConfigValidationHandler:
    """pydantic ``on_validate_python`` handler: inspects the raw config before validation."""

    def __init__(self, schema_type: Any):
        self.schema_type = schema_type

    def on_enter(self, input: Any, **kwargs: Any) -> None:  # noqa: A002 (pydantic's parameter name)
        check_scale_plugin_active(input, getattr(self.schema_type, "model_fields", {}))


class ScaleConfigGuard:
    """The pydantic plugin object (``pydantic.plugin.PydanticPluginProtocol``)."""

    def new_schema_validator(
        self,
        schema: Any,
        schema_type: Any,
        schema_type_path: Any,
        schema_kind: Any,
        config: Any,
        plugin_settings: Any,
    ) -> tuple[Any, Any, Any]:
        if _in_mro(schema_type, _AXOLOTL_CONFIG) and not _in_mro(schema_type, _SCALE_ARGS):
            return _ConfigValidationHandler(schema_type), None, None
        return None, None, None


#: Entry point ``[project.entry-points.pydantic] scale_plugins_axolotl = "scale_plugins.axolotl.guard:plugin"``.
plugin = ScaleConfigGuard()
