"""The YAML keys of the LLaMA-Factory adapter: ``use_scale_loss: true`` plus every SCALe option as ``scale_<name>``.

:class:`ScaleFinetuningArguments` is LLaMA-Factory's ``FinetuningArguments`` with those fields added. The
``scale_*`` fields are :class:`~scale_plugins.hf.fields.ScaleArguments` (same names, defaults and help text as
every other host, checked against the core by a test) and their values are validated by :class:`~scale_plugins.core.ScaleOptions`
itself, so a bad value is rejected with the same message everywhere, naming the ``scale_`` key.

LLaMA-Factory builds its ``HfArgumentParser`` from the lists in ``llamafactory.hparams.parser``; the launcher
(:mod:`.patch`) puts this class in place of ``FinetuningArguments`` there, so the keys are accepted by
``train``, ``chat``, ``export`` and the web UI alike, and rejected (as unknown keys) by a process that runs
without the patch: ``use_scale_loss: true`` can never silently train plain cross-entropy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.hparams.finetuning_args import FinetuningArguments

from ..core import OPTION_KEYS, PREFIX, ScaleConfigError, ScaleOptions, option_fields
from ..core.keys import unknown_key_message, unknown_option_keys
from ..hf.fields import ScaleArguments

SWITCH = "use_scale_loss"

#: LLaMA-Factory 0.9.5's own alternatives to cross-entropy in SFT (CustomSeq2SeqTrainer, compute_loss_func):
#: loss name -> FinetuningArguments switch. Each replaces the loss SCALe computes, so neither can be combined.
HOST_LOSSES: dict[str, str] = {"dft": "use_dft_loss", "asft": "use_asft_loss", "eaft": "use_eaft_loss"}

# Environment switches of LLaMA-Factory that train through another trainer or other processes than ours.
_REFUSED_ENV: dict[str, str] = {
    "USE_MCA": "USE_MCA=1 trains with Megatron-Core (mcore_adapter's trainer), not CustomSeq2SeqTrainer, so "
    "SCALe would not run. Unset USE_MCA.",
    "USE_RAY": "USE_RAY=1 trains in Ray workers that LLaMA-Factory starts itself, without the SCALe patches. "
    "Unset USE_RAY and launch with FORCE_TORCHRUN=1 (multi-GPU) instead.",
    "USE_KT": "USE_KT=1 trains with KTransformers (its own forks of transformers and accelerate), which SCALe "
    "does not support. Unset USE_KT.",
}


def _env_enabled(name: str) -> bool:
    # the same test as llamafactory.extras.misc.is_env_enabled
    return os.getenv(name, "0").lower() in ("true", "y", "1")


def scale_options_from(values: Mapping[str, Any]) -> ScaleOptions:
    """:class:`ScaleOptions` from a mapping of ``scale_*`` keys (absent keys take the defaults); errors name the key."""
    return ScaleOptions.from_dict({key: values[key] for key in OPTION_KEYS if key in values}, prefix=PREFIX)


def check_finetuning_args(args: Any) -> None:
    """Validate the SCALe keys of a (Scale)FinetuningArguments and the combinations SCALe cannot run with."""
    use_scale = getattr(args, SWITCH)
    if not isinstance(use_scale, bool):
        raise ScaleConfigError(f"{SWITCH}: must be true or false, got {use_scale!r}")
    if not use_scale:
        defaults = {PREFIX + opt.name: opt.host_default for opt in option_fields()}
        set_keys = [key for key in OPTION_KEYS if getattr(args, key) != defaults[key]]
        if set_keys:
            raise ScaleConfigError(
                f"{', '.join(set_keys)}: SCALe options are set but `{SWITCH}` is not true, so SCALe would not run. "
                f"Add `{SWITCH}: true` (or remove the scale_* keys)."
            )
        return
    args.scale_options()
    if args.scale_ignore_index != IGNORE_INDEX:
        raise ScaleConfigError(
            f"{PREFIX}ignore_index: LLaMA-Factory marks unsupervised labels with {IGNORE_INDEX}; "
            f"got {args.scale_ignore_index!r}. Remove the key."
        )
    problems = []
    if args.stage != "sft":
        problems.append(f"stage: SCALe is a supervised fine-tuning loss and needs `stage: sft`, got {args.stage!r}.")
    for name, switch in HOST_LOSSES.items():
        if getattr(args, switch, False):
            problems.append(f"{switch}: the {name.upper()} loss replaces the loss SCALe computes; use one of the two.")
    if getattr(args, "use_hyper_parallel", False):
        problems.append(
            "use_hyper_parallel: HyperParallel trains with its own trainer, not CustomSeq2SeqTrainer, so SCALe "
            "would not run. Use FORCE_TORCHRUN=1 (DDP / DeepSpeed) instead."
        )
    if getattr(args, "use_mca", False):
        problems.append(
            "use_mca: Megatron-Core training uses mcore_adapter's trainer, not CustomSeq2SeqTrainer, so SCALe "
            "would not run."
        )
    problems += [f"{name}: {why}" for name, why in _REFUSED_ENV.items() if _env_enabled(name)]
    if problems:
        raise ScaleConfigError(f"`{SWITCH}: true` cannot be combined with:\n  - " + "\n  - ".join(problems))


def check_train_args(model_args: Any, training_args: Any, finetuning_args: Any) -> None:
    """The checks that need the other argument groups (``training_args`` may be None: not parsed yet)."""
    if not getattr(finetuning_args, SWITCH, False):
        return
    problems = []
    if getattr(model_args, "use_kt", False):
        problems.append(
            "use_kt: KTransformers trains with its own forks of transformers and accelerate, which SCALe does not "
            "support. Remove use_kt."
        )
    if training_args is not None and getattr(training_args, "label_smoothing_factor", 0.0):
        problems.append("label_smoothing_factor: label smoothing cannot be combined with SCALe; set it to 0.")
    if problems:
        raise ScaleConfigError(f"`{SWITCH}: true` cannot be combined with:\n  - " + "\n  - ".join(problems))


@dataclass
class ScaleFinetuningArguments(ScaleArguments, FinetuningArguments):
    """LLaMA-Factory's ``FinetuningArguments`` with SCALe: ``use_scale_loss`` and every SCALe option prefixed
    ``scale_`` (declared in :class:`~scale_plugins.hf.fields.ScaleArguments`; docs/options.md).

    Parameters, in addition to FinetuningArguments':
        use_scale_loss (False): train with the SCALe loss (stage sft), configured by the ``scale_*`` keys.
    """

    use_scale_loss: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Train with SCALe, the segment-weighted loss for chain-of-thought SFT "
            "(stage sft; configured by the scale_* keys)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finetuning_args(self)


def _config_keys(args: dict[str, Any] | list[str]) -> list[str]:
    """The keys of a config as LLaMA-Factory's ``read_args`` returns it: a dict, or ``--key value`` arguments."""
    if isinstance(args, Mapping):
        return [str(key) for key in args]
    return [arg[2:].split("=", 1)[0] for arg in args if isinstance(arg, str) and arg.startswith("--")]


def check_scale_keys(keys: Iterable[str], known: Iterable[str] = ()) -> None:
    """Reject keys meant as SCALe keys that no argument class has (misspellings, a missing ``scale_`` prefix), in
    one line each naming the closest valid key: the core's rule, the same in every host
    (:mod:`scale_plugins.core.keys`). ``known``: other field names that may start with ``scale_`` (LLaMA-Factory's)."""
    problems = [unknown_key_message(key, (SWITCH,)) for key in unknown_option_keys(keys, known, (SWITCH,))]
    if problems:
        raise ScaleConfigError("; ".join(problems))


def parser_fields() -> set[str]:
    """Every key LLaMA-Factory's training parser accepts."""
    from llamafactory.hparams import parser

    return {field.name for cls in parser._TRAIN_ARGS for field in dataclasses.fields(cls)}


def preflight(args: dict[str, Any] | list[str] | None = None) -> Any:
    """Parse and validate the model and finetuning arguments of a training config (fast: no model, no data).

    Run by the launcher before it starts anything, so a bad ``scale_*`` value or a refused combination is
    reported once, in the launching process, before any torchrun or Ray worker starts and before
    LLaMA-Factory's own checks of the refused modes (which fail on missing packages first). Returns the
    :class:`ScaleFinetuningArguments`.
    """
    from llamafactory.hparams.model_args import ModelArguments
    from llamafactory.hparams.parser import _parse_args, read_args
    from transformers import HfArgumentParser

    args = read_args(args)
    check_scale_keys(_config_keys(args), parser_fields())
    parser = HfArgumentParser((ModelArguments, ScaleFinetuningArguments))
    model_args, finetuning_args = _parse_args(parser, args, allow_extra_keys=True)
    check_train_args(model_args, None, finetuning_args)
    return finetuning_args
