"""``ScalePlugin``: the Axolotl plugin behind ``loss: scale``."""

from __future__ import annotations

from typing import Any

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from ..core import ScaleConfigError
from ..versions import warn_if_untested
from .args import PLUGIN_PATH, PROMPT_FIX, scale_options_from_cfg, supervised_prompt_settings

# Axolotl's log filter shows INFO records of `axolotl.*` loggers only.
LOG = get_logger("axolotl.scale_plugins")


def _wants_scale(cfg: Any) -> bool:
    return cfg.get("loss") == "scale"


def plain_role_boundaries(cfg: Any) -> int:
    """Turn ``cfg.role_boundaries`` entries into plain dicts, in place; returns how many were converted.

    Works around an Axolotl 0.19.0 bug: ``load_cfg`` wraps each entry read from YAML in a ``DictDefault``, whose
    missing attributes read as ``None``, so ``processing_strategies._resolve_role_boundary_override`` takes the
    ``hasattr(spec, "model_dump")`` branch and calls ``None()`` (``TypeError: 'NoneType' object is not callable``)
    when the multimodal collator is built. A plain dict takes its ``dict(spec)`` branch, with the same keys and
    values. Entries that are already plain dicts or pydantic models are left alone.
    """
    entries = cfg.get("role_boundaries") or []
    wrapped = [isinstance(entry, dict) and type(entry) is not dict for entry in entries]
    if any(wrapped):
        cfg["role_boundaries"] = [dict(e) if w else e for e, w in zip(entries, wrapped)]
    return sum(wrapped)


class ScalePlugin(BasePlugin):
    """SCALe for Axolotl: list it under ``plugins:`` and set ``loss: scale``.

    - ``register``: warns when the plugin is listed without ``loss: scale`` (SCALe is then off), and once when
      Axolotl, transformers or torch is outside the tested versions (:mod:`scale_plugins.versions`);
    - ``get_input_args``: adds ``loss`` and the ``scale_*`` keys (:mod:`.args`) to the config schema;
    - ``pre_model_load``: warns when the config trains prompt tokens (``train_on_inputs``, prompt roles in
      ``roles_to_train``); passes ``role_boundaries`` on as plain dicts (:func:`plain_role_boundaries`), so the
      turn markers a multimodal recipe declares work in Axolotl 0.19.0;
    - ``get_trainer_cls``: :class:`~scale_plugins.axolotl.trainer.ScaleAxolotlTrainer` when ``loss: scale``
      (never for ``rl:`` runs, which the config validation refuses anyway);
    - ``post_trainer_create``: checks that the trainer Axolotl built is really the SCALe trainer (another
      plugin's ``get_trainer_cls`` could have won).

    The trainer module is imported only when needed: importing it imports Axolotl's training arguments,
    which Axolotl assembles from the training-args mixins of the plugins registered *at that moment*.
    """

    def register(self, cfg: Any) -> None:
        # Called once per config by Axolotl's `prepare_plugins`, with the raw config, before validation.
        warn_if_untested("axolotl", LOG.warning)  # outside the tested versions: once (scale_plugins.versions)
        if cfg.get("loss") is None:
            LOG.warning(
                "SCALe is off: %s is listed under `plugins:` but the config has no `loss: scale`, so this run trains "
                "Axolotl's stock loss. To train with SCALe, add `loss: scale` to the config.",
                PLUGIN_PATH,
            )

    def get_input_args(self) -> str:
        return "scale_plugins.axolotl.args.ScaleArgs"

    def pre_model_load(self, cfg: Any) -> None:
        if not _wants_scale(cfg):
            return
        if settings := supervised_prompt_settings(cfg):
            # Axolotl trains the content of these turns (their headers stay masked): SCALe's step check, which looks
            # for samples supervised from their first token, would not see it
            LOG.warning(
                "SCALe: this config trains prompt tokens (%s), and SCALe counts every supervised token outside the "
                "think block as answer: the prompt is weighed as answer. To fix it: %s.",
                ", ".join(settings),
                PROMPT_FIX,
            )
        if converted := plain_role_boundaries(cfg):
            LOG.info(
                "SCALe: passing %d role_boundaries entries on as plain dicts (works around Axolotl 0.19.0's "
                "DictDefault entries, which its multimodal collator cannot read)",
                converted,
            )

    def get_trainer_cls(self, cfg: Any) -> type | None:
        if not _wants_scale(cfg) or cfg.get("rl"):
            return None
        from .trainer import ScaleAxolotlTrainer

        return ScaleAxolotlTrainer.with_options(scale_options_from_cfg(cfg))

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        if not _wants_scale(cfg):
            return
        from .trainer import ScaleAxolotlTrainer

        if not isinstance(trainer, ScaleAxolotlTrainer):
            raise ScaleConfigError(
                f"loss: scale is set but Axolotl built a {type(trainer).__name__}, not the SCALe trainer: "
                "another plugin's get_trainer_cls took precedence (the first plugin to return a trainer wins). "
                f"Remove that plugin, or list {PLUGIN_PATH} before it."
            )
        LOG.info("SCALe active: %s with %s", type(trainer).__name__, trainer.scale_options)
