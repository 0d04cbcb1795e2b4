"""Every internal of TRL that ``ScaleSFTTrainer`` relies on: each private name it reads or writes lives here, and each
is checked before it is used (the hf layer's own are in :mod:`scale_plugins.hf.internals`).

``ScaleSFTTrainer`` replaces ``SFTTrainer.compute_loss`` and records TRL's own metrics as that method does, so that
``SFTTrainer.log`` shows them: ``entropy``, ``mean_token_accuracy``, ``num_tokens`` and ``aux_loss`` in the private
``_metrics`` (mode -> metric -> values), the running token count in the private ``_total_train_tokens``. TRL 1.16's
tensor-parallel divisor (``_tp_size``) is not used: SCALe refuses tensor parallelism, so it is 1.

:func:`check_sft_trainer` (before ``SFTTrainer.__init__`` runs) checks that TRL's ``compute_loss`` still keeps those
metrics under those names (its code names the attributes and holds the metric names) and that ``log`` reads
``_metrics``; :func:`check_state` (after it) checks the attributes themselves. A TRL that lacks one raises
:class:`UnsupportedTrlError`, naming what is missing, the installed version and the tested range
(``scale_plugins.versions``); nothing has trained.

TRL's fused LM head (TRL 1.16: ``SFTTrainer.__init__`` calls ``trl.trainer.utils.add_fused_lm_head``, which replaces
the model's ``forward`` with one taking ``fused_lm_head=True``) is found by what TRL does, not by a name inside the
model: :func:`fused_head` reads whether ``SFTTrainer.__init__`` calls that function, takes the code of the forward the
function installs, and checks the output fields ``ScaleSFTTrainer`` reads; :func:`is_patched` then tells a model whose
``forward`` is that code. A TRL from 1.16 on whose ``SFTTrainer`` no longer adds the head raises
:class:`UnsupportedTrlError`. Where ``SFTTrainer`` adds the head but a model's ``forward`` is not the one it installs,
the trainer falls back to the logits in evaluation, logged once and counted (``scale/trl_head_not_found``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import CodeType
from typing import Any

import torch

from ..versions import installed_version, range_spec

__all__ = [
    "FUSED_HEAD_ARG",
    "FUSED_HEAD_FUNCTION",
    "FUSED_HEAD_SINCE",
    "TrlFusedHead",
    "UnsupportedTrlError",
    "check_sft_trainer",
    "check_state",
    "fused_head",
    "gradient_accumulation_steps",
    "is_patched",
    "record_aux_loss",
    "record_metrics",
]

#: (SFTTrainer method, name its code must use): TRL's compute_loss keeps its metrics and token count in these private
#: attributes (and asks MoE models for router logits by ``aux_loss_enabled``); its ``log`` averages ``_metrics``
USES: tuple[tuple[str, str], ...] = (
    ("compute_loss", "_metrics"),
    ("compute_loss", "_total_train_tokens"),
    ("compute_loss", "aux_loss_enabled"),
    ("log", "_metrics"),
)
#: the metric names and input keys TRL's compute_loss uses (constants of its code), which ScaleSFTTrainer uses too
CONSTANTS: tuple[str, ...] = (
    "train",
    "eval",
    "entropy",
    "mean_token_accuracy",
    "num_tokens",
    "aux_loss",
    "attention_mask",
    "position_ids",
)

#: TRL's fused LM head: the function ``SFTTrainer.__init__`` patches the model with, and the forward's keyword
FUSED_HEAD_FUNCTION = "add_fused_lm_head"
FUSED_HEAD_ARG = "fused_lm_head"
#: the first TRL version whose SFTTrainer adds it (every TRL from it on must)
FUSED_HEAD_SINCE = "1.16"
#: the fields of the head's output (``FusedCausalLMOutput``) that ScaleSFTTrainer reads
FUSED_HEAD_OUTPUTS: tuple[str, ...] = ("log_probs", "entropy", "is_top1", "label_mask", "aux_loss")
#: with the fused head, TRL's compute_loss weighs the MoE aux loss with these (ScaleSFTTrainer follows it)
FUSED_HEAD_USES: tuple[tuple[str, str], ...] = (
    ("compute_loss", "router_aux_loss_coef"),
    ("compute_loss", "current_gradient_accumulation_steps"),
)


class UnsupportedTrlError(RuntimeError):
    """The installed TRL lacks, or uses differently, an internal ScaleSFTTrainer needs."""


def unsupported(missing: Iterable[str]) -> UnsupportedTrlError:
    """The error naming what is missing, the installed TRL and the tested range."""
    spec = range_spec("trl")
    return UnsupportedTrlError(
        f"scale-plugins (TRL) is tested with trl {spec} (installed: {installed_version('trl') or 'unknown'}); "
        "ScaleSFTTrainer needs these internals of TRL, which this version lacks or uses differently:\n  - "
        + "\n  - ".join(missing)
        + f"\nInstall a tested version: pip install 'trl{spec}' (or scale-plugins[trl])."
    )


def _sft_trainer() -> type:
    from trl import SFTTrainer

    return SFTTrainer


def _code(obj: Any) -> CodeType | None:
    code = getattr(getattr(obj, "__func__", obj), "__code__", None)
    return code if isinstance(code, CodeType) else None


def _missing_uses(cls: type, uses: Iterable[tuple[str, str]]) -> list[str]:
    missing = []
    for method, name in uses:
        code = _code(getattr(cls, method, None))
        if code is None:
            missing.append(f"SFTTrainer.{method}")
        elif name not in code.co_names:
            missing.append(f"SFTTrainer.{method} (no longer uses {name!r})")
    return missing


def check_sft_trainer(cls: type | None = None) -> TrlFusedHead | None:
    """The class guard, before ``SFTTrainer.__init__`` runs: raises :class:`UnsupportedTrlError` when ``cls``
    (default: TRL's ``SFTTrainer``) lacks an internal ScaleSFTTrainer relies on. Returns :func:`fused_head`."""
    cls = _sft_trainer() if cls is None else cls
    missing = _missing_uses(cls, USES)
    code = _code(getattr(cls, "compute_loss", None))
    if code is not None:
        constants = {c for c in code.co_consts if isinstance(c, str)}
        missing += [f"SFTTrainer.compute_loss (no longer uses {c!r})" for c in CONSTANTS if c not in constants]
    if missing:
        raise unsupported(missing)
    return fused_head(cls)


def check_state(trainer: Any, head: TrlFusedHead | None) -> None:
    """The instance guard, after ``SFTTrainer.__init__``: the attributes TRL's compute_loss uses are set as it uses
    them. Raises :class:`UnsupportedTrlError`."""
    missing = []
    metrics = vars(trainer).get("_metrics")
    if not isinstance(metrics, Mapping) or not all(mode in metrics for mode in ("train", "eval")):
        missing.append("SFTTrainer._metrics, a mapping with 'train' and 'eval'")
    if not isinstance(vars(trainer).get("_total_train_tokens"), int):
        missing.append("SFTTrainer._total_train_tokens, an int")
    if not isinstance(vars(trainer).get("aux_loss_enabled"), bool):
        missing.append("SFTTrainer.aux_loss_enabled, a bool")
    if head is not None and "router_aux_loss_coef" not in vars(trainer):
        missing.append("SFTTrainer.router_aux_loss_coef (with the fused LM head)")
    if missing:
        raise unsupported(missing)


# -- the fused LM head ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrlFusedHead:
    """TRL's fused LM head: the function that adds it, and the code of the ``forward`` it installs."""

    function: Callable[..., Any]
    forwards: frozenset[CodeType]


def _takes_keyword(code: CodeType, name: str) -> bool:
    start = code.co_argcount + code.co_posonlyargcount
    return name in code.co_varnames[: start + code.co_kwonlyargcount]


def fused_head(cls: type | None = None) -> TrlFusedHead | None:
    """TRL's fused LM head, where ``cls`` (default: TRL's ``SFTTrainer``) adds it in its ``__init__``; None where it
    does not (TRL < 1.16). Raises :class:`UnsupportedTrlError` where TRL from 1.16 on no longer adds it, or adds it
    with a function that lacks what ScaleSFTTrainer relies on."""
    from packaging.version import Version

    cls = _sft_trainer() if cls is None else cls
    init = _code(getattr(cls, "__init__", None))
    version = installed_version("trl") or "0"
    if init is None or FUSED_HEAD_FUNCTION not in init.co_names:
        if Version(version) >= Version(FUSED_HEAD_SINCE):
            raise unsupported([f"SFTTrainer.__init__ calling {FUSED_HEAD_FUNCTION} (TRL's fused LM head)"])
        return None
    module = sys.modules.get(getattr(cls, "__module__", ""))
    function = getattr(module, FUSED_HEAD_FUNCTION, None)
    code = _code(function)
    if function is None or code is None:
        raise unsupported([f"{getattr(cls, '__module__', '?')}.{FUSED_HEAD_FUNCTION}"])
    forwards = frozenset(c for c in code.co_consts if isinstance(c, CodeType) and _takes_keyword(c, FUSED_HEAD_ARG))
    missing = [] if forwards else [f"{FUSED_HEAD_FUNCTION}: a forward taking {FUSED_HEAD_ARG}="]
    output = getattr(function, "__globals__", {}).get("FusedCausalLMOutput")
    fields = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set()
    missing += [f"FusedCausalLMOutput.{name}" for name in FUSED_HEAD_OUTPUTS if name not in fields]
    missing += _missing_uses(cls, FUSED_HEAD_USES)
    if missing:
        raise unsupported(missing)
    return TrlFusedHead(function, forwards)


def is_patched(model: Any, head: TrlFusedHead | None) -> bool:
    """Whether ``model`` (or the model under its PEFT wrapper) has the ``forward`` TRL's fused head installs."""
    if head is None:
        return False
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    code = _code(vars(base).get("forward"))
    return code is not None and code in head.forwards


# -- TRL's metrics -------------------------------------------------------------------------------------------------


def _mode(trainer: Any) -> str:
    return "train" if trainer.model.training else "eval"


def _train_tokens(inputs: Mapping[str, Any], gather: Callable[[torch.Tensor], torch.Tensor]) -> int:
    """The tokens of a training batch over every rank, as TRL counts them (padding-free batches: their length)."""
    if "attention_mask" in inputs:
        return int(gather(inputs["attention_mask"].sum()).sum().item())
    if "position_ids" in inputs:
        position_ids = inputs["position_ids"]
        return int(gather(torch.tensor(position_ids.size(1), device=position_ids.device)).sum().item())
    raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")


def record_metrics(
    trainer: Any,
    inputs: Mapping[str, Any],
    num_valid: torch.Tensor,
    entropy: torch.Tensor | None,
    correct: torch.Tensor | None,
) -> None:
    """TRL's own metrics (entropy, mean_token_accuracy, num_tokens), as ``SFTTrainer.compute_loss`` records them."""
    mode = _mode(trainer)
    metrics = trainer._metrics[mode]
    gather = trainer.accelerator.gather_for_metrics
    num_valid = gather(num_valid).sum()
    if entropy is not None:
        entropy = gather(entropy).sum()
        metrics["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
    if correct is not None:
        correct = gather(correct).sum()
        metrics["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
    if mode == "train":
        trainer._total_train_tokens += _train_tokens(inputs, gather)
    metrics["num_tokens"] = [trainer._total_train_tokens]


def record_aux_loss(trainer: Any, aux: torch.Tensor) -> None:
    """TRL's ``aux_loss`` metric (the MoE router loss, averaged over the ranks)."""
    trainer._metrics[_mode(trainer)]["aux_loss"].append(
        trainer.accelerator.gather_for_metrics(aux.detach()).mean().item()
    )


def gradient_accumulation_steps(trainer: Any) -> int:
    """The micro-batches of the current optimizer step, as TRL 1.16's compute_loss reads them (set by the Trainer's
    training loop); raises :class:`UnsupportedTrlError` where the Trainer does not set it."""
    steps = getattr(trainer, "current_gradient_accumulation_steps", None)
    if not isinstance(steps, int):
        raise unsupported(["Trainer.current_gradient_accumulation_steps, set by the training loop"])
    return max(steps, 1)
