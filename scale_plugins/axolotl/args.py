"""The YAML keys of the Axolotl adapter: ``loss: scale`` plus every SCALe option as ``scale_<name>``.

The ``scale_*`` fields are derived from :func:`scale_plugins.core.option_fields` (same names, defaults and
help text as every other host); their values are validated by :class:`ScaleOptions` itself, so a bad value
is rejected with the same message everywhere, naming the ``scale_`` key. Axolotl merges :class:`ScaleArgs`
into its config schema when the plugin is listed under ``plugins:``.

Axolotl drops keys its schema does not know, so with the plugin listed a misspelled ``scale_*`` key (or a near-miss
of the prefix, ``scal_schedule``) is an error naming the closest option, and so are combinations the loss cannot
support (other losses, context / tensor parallelism): see docs/axolotl.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..core import OPTION_KEYS, PREFIX, ScaleOptions, option_fields
from ..core.keys import options_set, unknown_option_keys
from ..core.keys import unknown_key_message as core_unknown_key_message

PLUGIN_PATH = "scale_plugins.axolotl.ScalePlugin"

#: How to keep the prompt out of the loss in Axolotl (the supervised-prompt warnings of the plugin and trainer).
PROMPT_FIX = (
    "set `train_on_inputs: false` and, for `type: chat_template` datasets, `roles_to_train: [assistant]`; a "
    "multimodal model without built-in turn markers needs `role_boundaries` (docs/axolotl.md, Multimodal)"
)
#: Roles whose turns are prompt, not answer (Axolotl's chat_template role names and their common aliases).
PROMPT_ROLES = frozenset({"user", "human", "system", "tool", "ipython", "function", "observation", "input"})


def supervised_prompt_settings(cfg: Mapping[str, Any]) -> list[str]:
    """The settings of an Axolotl config that train prompt tokens, which SCALe would weigh as answer."""
    found = ["train_on_inputs: true"] if cfg.get("train_on_inputs") else []
    for i, dataset in enumerate(cfg.get("datasets") or []):
        roles = dataset.get("roles_to_train") if isinstance(dataset, Mapping) else None
        prompt_roles = sorted({str(role) for role in roles or []} & PROMPT_ROLES)
        if prompt_roles:
            found.append(f"datasets[{i}].roles_to_train: {prompt_roles}")
    return found


_NUMERIC_KEYS = tuple(PREFIX + opt.name for opt in option_fields() if opt.type in (int, float))

# Config keys that replace or bypass the loss SCALe computes: with `loss: scale` each would either be
# silently ignored or silently win over SCALe, so the combination is refused.
CONFLICTING_KEYS: dict[str, str] = {
    "rl": "SCALe is a supervised fine-tuning loss; `rl:` runs (DPO, GRPO, ...) use their own losses. "
    "Remove `loss: scale` from the RL config (SCALe-SFT first, then GRPO from its checkpoint).",
    "cut_cross_entropy": "Cut Cross Entropy replaces the model's loss with a fused kernel that SCALe cannot weight. "
    "Set `cut_cross_entropy: false` or remove the CutCrossEntropyPlugin.",
    "liger_fused_linear_cross_entropy": "Liger's fused linear cross-entropy replaces the model's loss with a kernel "
    "that SCALe cannot weight. Set `liger_fused_linear_cross_entropy: false`.",
    "liger_cross_entropy": "Liger's cross-entropy patches the model's loss, which SCALe does not use (it would have "
    "no effect). Set `liger_cross_entropy: false`.",
    "chunked_cross_entropy": "Axolotl's chunked cross-entropy patches the model's loss, which SCALe does not use "
    "(SCALe already computes its cross-entropy in chunks). Set `chunked_cross_entropy: false`.",
    "flash_attn_cross_entropy": "flash-attn's cross-entropy patches the model's loss, which SCALe does not use. "
    "Set `flash_attn_cross_entropy: false`.",
    "use_eaft": "EAFT is another loss (compute_loss_func); it cannot be combined with SCALe.",
    "orpo_alpha": "ORPO computes its own loss; it cannot be combined with SCALe.",
    "kd_trainer": "Knowledge distillation brings its own trainer and loss; it cannot be combined with SCALe.",
    "reward_model": "Reward-model training has its own loss; it cannot be combined with SCALe.",
    "process_reward_model": "Process-reward-model training has its own loss; it cannot be combined with SCALe.",
    "trainer_cls": "`loss: scale` brings its own trainer (ScaleAxolotlTrainer), so a custom `trainer_cls` would be "
    "ignored. Remove one of the two.",
}


# Parallelism that splits one sample over several ranks, or gives several ranks the same sample: SCALe's counts are
# summed over every rank of the torch.distributed group, so with any of these the loss would be wrong.
PARALLELISM_KEYS: dict[str, str] = {
    "context_parallel_size": "context parallelism splits each sample's tokens over several ranks, so SCALe's "
    "`sample` normalization would count one sample once per rank (as several samples, each with part of its "
    "segments), and its segment counts, summed over the whole torch.distributed group, would mix the shards of a "
    "sample with the samples of the other data-parallel ranks: the loss would not be SCALe's. "
    "Set `context_parallel_size: 1` (data parallelism, DeepSpeed ZeRO and sample packing work with SCALe).",
    "sequence_parallel_degree": "`sequence_parallel_degree` is Axolotl's older name of `context_parallel_size`: "
    "context parallelism splits each sample over several ranks, which SCALe's per-sample counts do not support. "
    "Set it to 1.",
    "tensor_parallel_size": "tensor-parallel ranks all see the same samples, and SCALe sums its segment counts over "
    "the whole torch.distributed group, so every sample would be counted once per tensor-parallel rank and the "
    "loss scaled wrongly. Set `tensor_parallel_size: 1` (DeepSpeed ZeRO-3 shards the model instead).",
}


def _parallel_size(value: Any) -> int:
    """The size a parallelism key asks for (1 when unset or unreadable: Axolotl's own validation reports those)."""
    if isinstance(value, bool):
        return 1
    try:
        return int(value) if value is not None else 1
    except (TypeError, ValueError):
        return 1


def _is_cce_plugin(name: Any) -> bool:
    return isinstance(name, str) and "cut_cross_entropy" in name


def _conflicts(data: Mapping[str, Any]) -> list[str]:
    """Messages for every key of ``data`` that must not be combined with ``loss: scale``."""
    found = [f"{key}: {why}" for key, why in CONFLICTING_KEYS.items() if data.get(key)]
    found += [
        f"{key}: {data[key]!r}: {why}" for key, why in PARALLELISM_KEYS.items() if _parallel_size(data.get(key)) > 1
    ]
    # Listing the CCE plugin turns it on: its own `cut_cross_entropy` key defaults to true.
    if any(_is_cce_plugin(p) for p in data.get("plugins") or ()) and data.get("cut_cross_entropy") is None:
        found.append(
            f"plugins: the CutCrossEntropyPlugin is listed (it enables itself). {CONFLICTING_KEYS['cut_cross_entropy']}"
        )
    return found


def unknown_scale_keys(data: Mapping[str, Any], known: Iterable[str]) -> list[str]:
    """Keys of a raw config that are meant as SCALe options but are not one, nor a field of the schema (``known``:
    the merged schema's fields, so a ``scale_*`` key of Axolotl or of another plugin stays allowed); the rule is the
    core's, the same in every host (:mod:`scale_plugins.core.keys`)."""
    return [key for key in unknown_option_keys(data, known) if data[key] is not None]


def unknown_key_message(key: str) -> str:
    """The core's message for ``key`` (the closest option), and why Axolotl stops."""
    return (
        f"{core_unknown_key_message(key)} Axolotl would drop this key and train with the default instead, "
        "so training stops here."
    )


def _option_field(name: str) -> Any:
    """The pydantic field of the ``scale_<name>`` key, from the core's definition of the option.

    The pydantic default is ``None`` and the core applies the real default (shown in the description):
    a key the user did not write never appears in the validated config, so "scale_* keys without
    ``loss: scale``" is detected exactly, also when Axolotl validates an already validated config again.
    """
    opt = next(o for o in option_fields() if o.name == name)
    default = list(opt.default) if opt.is_list else opt.default
    help_text = f"SCALe: {opt.help} Default: {default!r}."
    extra: dict[str, Any] = {"description": help_text, "scale_default": default}
    if opt.choices:
        extra["choices"] = list(opt.choices)
    return Field(default=None, description=help_text, json_schema_extra=extra)


class _ScaleArgsBase(BaseModel):
    """``loss: scale`` turns SCALe on; the ``scale_*`` fields (added from the core's options) configure it."""

    loss: Literal["scale"] | None = Field(
        default=None,
        description="SCALe: set to `scale` to train with the SCALe segment-weighted loss "
        "(needs `plugins: [scale_plugins.axolotl.ScalePlugin]`).",
        json_schema_extra={"description": "Set to `scale` to train with the SCALe loss."},
    )

    @field_validator(*_NUMERIC_KEYS, mode="before", check_fields=False)
    @classmethod
    def _no_booleans(cls, value: Any, info: Any) -> Any:
        # pydantic would quietly read `true` as 1.0
        if isinstance(value, bool):
            raise ValueError(f"{info.field_name}: must be a number, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _check_scale_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        unknown = unknown_scale_keys(data, cls.model_fields)
        if unknown:
            raise ValueError("\n".join(unknown_key_message(key) for key in unknown))
        set_keys = options_set(data)
        if data.get("loss") != "scale":
            if set_keys:
                raise ValueError(
                    f"{', '.join(set_keys)}: SCALe options are set but `loss: scale` is not, so SCALe would not run. "
                    "Add `loss: scale` (or remove the scale_* keys)."
                )
            return data
        conflicts = _conflicts(data)
        if conflicts:
            raise ValueError("`loss: scale` cannot be combined with:\n  - " + "\n  - ".join(conflicts))
        return data

    @model_validator(mode="after")
    def _check_scale_options(self) -> _ScaleArgsBase:
        scale_options_from_cfg(self.model_dump(include=set(OPTION_KEYS)))
        return self


class ScaleArgs(_ScaleArgsBase):
    """Axolotl config keys of SCALe: `loss: scale` and every SCALe option as `scale_<name>` (docs/options.md).

    The pydantic model Axolotl merges into its config schema (``ScalePlugin.get_input_args``). Each field is
    declared here, typed; its default, choices and description come from the core's definition, and
    tests/axolotl/test_config.py checks the two agree.
    """

    scale_think_open: str | None = _option_field("think_open")
    scale_think_close: str | None = _option_field("think_close")
    scale_think_close_segment: str | None = _option_field("think_close_segment")
    scale_close_weight: float | None = _option_field("close_weight")
    scale_schedule: str | None = _option_field("schedule")
    scale_answer_weight_start: float | None = _option_field("answer_weight_start")
    scale_answer_weight_end: float | None = _option_field("answer_weight_end")
    scale_step_at: float | None = _option_field("step_at")
    scale_normalization: str | None = _option_field("normalization")
    # YAML: a list of {name, open, close, weight_start, weight_end}, or 'name:<open>:</close>:w0:w1' strings
    scale_extra_segments: list[dict[str, Any] | str] | None = _option_field("extra_segments")
    scale_empty_think: str | None = _option_field("empty_think")
    scale_on_missing_think: str | None = _option_field("on_missing_think")
    scale_ignore_index: int | None = _option_field("ignore_index")


def scale_options_from_cfg(cfg: Mapping[str, Any]) -> ScaleOptions:
    """The :class:`ScaleOptions` of an Axolotl config (a ``DictDefault`` or any mapping); errors name the key."""
    values = {key: cfg.get(key) for key in OPTION_KEYS}
    return ScaleOptions.from_dict(values, prefix=PREFIX)
