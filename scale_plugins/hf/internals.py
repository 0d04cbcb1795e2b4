"""Every internal of transformers (and of accelerate and torch.compile around it) that the hf layer relies on: each
private name and each reading of a model's source lives here, and each is checked before it is used.

The trainer (:func:`check_trainer`, run by ``ScaleTrainerMixin.scale_setup``): the mixin's exact loss needs

- a method of ``transformers.Trainer`` (the training loop, ``_run_epoch`` in transformers 5.x) that calls
  ``self.get_batch_samples`` once per optimizer step: that is where the mixin counts a step's segments;
- the flag that stops the Trainer from dividing the loss by the accumulation steps: ``loss_is_scaled_for_ga``
  (declared by the Trainer and read by ``training_step``), or on an older Trainer without it
  ``model_accepts_loss_kwargs`` (read by ``training_step``).

A transformers without them raises :class:`UnsupportedTransformersError`, naming the tested range
(``scale_plugins.versions``); nothing has trained.

The processing after the LM head (:func:`logit_processing`): soft-capping and logit scales are read from the model's
text config, the way TRL's own fused LM head (``trl.trainer.utils.add_fused_lm_head``, TRL 1.16) reads them:
``final_logit_softcapping``; ``logit_scale``, ``output_multiplier``, ``lm_head_multiplier`` (multipliers);
``logits_scaling`` (a divisor, a multiplier for HyperCLOVA X). Unlike TRL, a value is only used where the model class's
``forward`` is seen to apply it (its source names the attribute, with ``*`` or ``/`` for a scale), since a config may
carry a setting its forward ignores (Gemma 3's vision-language model does not soft-cap): a setting the forward is not
seen to apply, a model attribute that disagrees with its config, a forward whose source cannot be read, or one that
post-processes the logits in a way no config says (:data:`UNSUPPORTED_SOURCE`) make the fused head unsupported for
that model: its loss is computed from the logits instead, with the reason logged once and counted in
``scale/logits_path``. After the call, ``hf.head`` also checks that the model returned what the head computed.

accelerate's device hooks (``_hf_hook``, ``_old_forward``: :func:`head_forward_attribute`) and torch.compile's
wrapper (``_orig_mod``: :func:`unwrap`) are checked where they are met: a hook or a compiled wrapper without the
name it should have raises :class:`UnsupportedTransformersError`.

Imports torch and transformers-level code only (no trl / axolotl / llamafactory).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

import torch

from ..versions import TESTED, installed_version, range_spec

__all__ = [
    "FusedHeadUnsupported",
    "LOGIT_SETTINGS",
    "PostKwargs",
    "UNSUPPORTED_SOURCE",
    "UnsupportedTransformersError",
    "attributes_set",
    "check_trainer",
    "forward_source",
    "ga_scaling_flag",
    "head_forward_attribute",
    "logit_processing",
    "text_config",
    "unwrap",
]


class UnsupportedTransformersError(RuntimeError):
    """The installed transformers (or accelerate, torch) lacks, or uses differently, an internal the hf layer needs."""


class FusedHeadUnsupported(Exception):
    """The fused head cannot compute this model's loss; the message says why (the logits path is used instead)."""


def unsupported(package: str, missing: Iterable[str]) -> UnsupportedTransformersError:
    """The error for internals of ``package`` that are missing: names them, the installed version and, for a package
    with a tested range (``scale_plugins.versions``), that range."""
    installed = installed_version(package) or "unknown"
    spec = range_spec(package) if package in TESTED else ""
    tested = (
        f"scale-plugins is tested with {package} {spec} (installed: {installed})"
        if spec
        else (f"{package} {installed} is installed")
    )
    return UnsupportedTransformersError(
        f"{tested}; SCALe needs these internals of {package}, which this version lacks or uses differently:\n  - "
        + "\n  - ".join(missing)
        + (f"\nInstall a tested version: pip install '{package}{spec}'." if spec else "")
    )


# -- the Trainer --------------------------------------------------------------------------------------------------

#: what the mixin's step counts need the Trainer's training loop to call, once per optimizer step
BATCH_SAMPLES = "get_batch_samples"
#: the Trainer's flag for a loss already scaled for gradient accumulation (transformers >= 5.23) ...
LOSS_SCALED_FLAG = "loss_is_scaled_for_ga"
#: ... and the one older Trainers read instead (a model that takes the loss kwargs: no division by the steps)
LOSS_KWARGS_FLAG = "model_accepts_loss_kwargs"


def _code(obj: Any) -> Any:
    return getattr(getattr(obj, "__func__", obj), "__code__", None)


def _uses(obj: Any, name: str) -> bool:
    code = _code(obj)
    return code is not None and name in code.co_names


def _callers(cls: type, name: str) -> list[str]:
    """The methods defined in ``cls`` (not inherited) whose code names ``name``."""
    return [attr for attr, value in vars(cls).items() if _uses(value, name)]


def ga_scaling_flag(trainer_cls: type | None = None) -> str:
    """Which flag keeps ``trainer_cls`` (default ``transformers.Trainer``) from dividing the loss by the gradient
    accumulation steps: :data:`LOSS_SCALED_FLAG` where the Trainer declares it and ``training_step`` reads it, else
    :data:`LOSS_KWARGS_FLAG` where ``training_step`` reads that. Raises :class:`UnsupportedTransformersError`."""
    if trainer_cls is None:
        import transformers

        trainer_cls = transformers.Trainer
    step = getattr(trainer_cls, "training_step", None)
    if LOSS_SCALED_FLAG in vars(trainer_cls):
        if _uses(step, LOSS_SCALED_FLAG):
            return LOSS_SCALED_FLAG
        raise unsupported("transformers", [f"Trainer.training_step (no longer reads {LOSS_SCALED_FLAG!r})"])
    if _uses(step, LOSS_KWARGS_FLAG):
        return LOSS_KWARGS_FLAG
    raise unsupported(
        "transformers",
        [f"Trainer.{LOSS_SCALED_FLAG}, or Trainer.training_step reading {LOSS_KWARGS_FLAG!r} (it reads neither)"],
    )


def check_trainer(trainer_cls: type | None = None) -> str:
    """The trainer guard: the internals of ``transformers.Trainer`` (or ``trainer_cls``) the mixin relies on are there.
    Returns :func:`ga_scaling_flag`; raises :class:`UnsupportedTransformersError` naming what is missing."""
    if trainer_cls is None:
        import transformers

        trainer_cls = transformers.Trainer
    missing = []
    if not callable(getattr(trainer_cls, BATCH_SAMPLES, None)):
        missing.append(f"Trainer.{BATCH_SAMPLES}")
    elif not _callers(trainer_cls, BATCH_SAMPLES):
        missing.append(f"a Trainer method calling self.{BATCH_SAMPLES} (the training loop no longer does)")
    try:
        flag = ga_scaling_flag(trainer_cls)
    except UnsupportedTransformersError as err:
        missing.extend(line.removeprefix("  - ") for line in str(err).splitlines() if line.startswith("  - "))
    if missing:
        raise unsupported("transformers", missing)
    return flag


# -- unwrapping and the LM head's module -----------------------------------------------------------------------

#: torch.compile's wrapper (``torch._dynamo.eval_frame.OptimizedModule``) holds the compiled module here
COMPILED_MODULE = "_orig_mod"
#: accelerate's device hooks (``accelerate.hooks.add_hook_to_module``): the hook, and the module's own forward that
#: the hooked ``forward`` calls
ACCELERATE_HOOK = "_hf_hook"
ACCELERATE_OLD_FORWARD = "_old_forward"


def _compiled_module_class() -> type | None:
    """torch.compile's wrapper class, where torch.compile has been used in this process (never imported here)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    cls = getattr(eval_frame, "OptimizedModule", None)
    return cls if isinstance(cls, type) else None


def unwrap(model: Any) -> Any:
    """The transformers model under DDP / DeepSpeed engines, torch.compile and PEFT wrappers."""
    compiled = _compiled_module_class()
    for _ in range(8):
        if compiled is not None and isinstance(model, compiled):
            try:
                inner = getattr(model, COMPILED_MODULE)
            except (AttributeError, KeyError):  # torch 2.13 looks it up in _modules
                inner = None
            if not isinstance(inner, torch.nn.Module):
                raise unsupported("torch", [f"torch.compile's {compiled.__name__}.{COMPILED_MODULE}"])
            model = inner
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif not hasattr(model, "get_output_embeddings") and isinstance(
            getattr(model, "module", None), torch.nn.Module
        ):
            model = model.module
        else:
            break
    return model


def head_forward_attribute(head: torch.nn.Module) -> str:
    """The attribute of ``head`` to replace for one call: ``forward``, or with an accelerate device hook (which
    replaces ``forward`` and calls the module's own as ``_old_forward``) ``_old_forward``, so the hook still runs."""
    if ACCELERATE_HOOK not in vars(head):
        return "forward"
    if ACCELERATE_OLD_FORWARD not in vars(head):
        raise unsupported("accelerate", [f"accelerate's {ACCELERATE_OLD_FORWARD} beside {ACCELERATE_HOOK}"])
    return ACCELERATE_OLD_FORWARD


# -- the processing after the LM head ---------------------------------------------------------------------------

#: (config attribute, what the model's forward does with the logits), in the order TRL's fused head reads them
LOGIT_SETTINGS: tuple[tuple[str, str], ...] = (
    ("final_logit_softcapping", "softcap"),
    ("logit_scale", "multiplier"),
    ("output_multiplier", "multiplier"),
    ("lm_head_multiplier", "multiplier"),
    ("logits_scaling", "divisor"),
)
#: model types whose ``logits_scaling`` multiplies the logits (TRL's rule; Granite and MiniCPM3 divide by it)
MULTIPLYING_LOGITS_SCALING = frozenset({"hyperclovax"})
_NEUTRAL: dict[str, float | None] = {"softcap": None, "multiplier": 1.0, "divisor": 1.0}
#: what a forward may do to the logits that no config says and the carrier check cannot see (a slice of the
#: vocabulary, a soft-cap in a helper of its own): read from the forward's source
UNSUPPORTED_SOURCE = re.compile(r"unpadded_vocab_size|logit_softcap\(")


class PostKwargs(TypedDict, total=False):
    """The keyword arguments of :func:`~scale_plugins.core.fused_linear_weighted_ce` for the processing after the
    head."""

    softcap: float
    logit_multiplier: float
    logit_divisor: float


def text_config(model: Any) -> Any:
    """The model's text (decoder) config: ``config.get_text_config()`` for a vision-language model, else the config."""
    config = getattr(model, "config", None)
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def forward_source(model: Any) -> str | None:
    """The source of the model class's ``forward`` (None where it cannot be read)."""
    cls: Any = type(model)
    return _class_forward_source(cls)


@functools.cache
def _class_forward_source(cls: Any) -> str | None:
    """Read once per model class: reading source is file I/O, and this runs on every training step."""
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return None


def _applies(source: str, attribute: str, kind: str) -> bool:
    """Whether the forward's ``source`` applies ``attribute`` as ``kind``: names it, and for a scale multiplies (``*``)
    or divides (``/``) by it (``self.config.x``, ``self.x``, ``text_config.x``, ``get_text_config().x``, ``x``)."""
    if kind == "softcap":
        return re.search(rf"\b{attribute}\b", source) is not None
    operator = r"\*" if kind == "multiplier" else "/"
    return re.search(rf"{operator}\s*(?:[\w.]+(?:\(\))?\.)*{attribute}\b", source) is not None


_VERBS = {"softcap": "soft-cap the logits with", "multiplier": "multiply the logits by", "divisor": "divide them by"}


def logit_processing(base: Any) -> tuple[PostKwargs, list[tuple[Any, str, Any]]]:
    """The keyword arguments of the fused function for the processing ``base`` (an unwrapped transformers model)
    applies after its head, read from its text config, and the ``(object, attribute, neutral value)`` that switch that
    processing off in its forward for one call. Raises :class:`FusedHeadUnsupported` where the fused head cannot
    reproduce it (see the module's docstring)."""
    name = type(base).__name__
    source = forward_source(base)
    if source is None:
        raise FusedHeadUnsupported(f"the source of {name}.forward cannot be read")
    if UNSUPPORTED_SOURCE.search(source):
        raise FusedHeadUnsupported(
            f"{name}.forward post-processes the logits in a way the fused head does not reproduce"
        )
    text = text_config(base)
    holders: list[Any] = []
    for obj in (text, getattr(base, "config", None), base):
        if obj is not None and all(obj is not h for h in holders):
            holders.append(obj)
    kwargs: PostKwargs = {}
    neutral: list[tuple[Any, str, Any]] = []
    for attribute, kind in LOGIT_SETTINGS:
        if kind == "divisor" and getattr(text, "model_type", None) in MULTIPLYING_LOGITS_SCALING:
            kind = "multiplier"
        value = getattr(text, attribute, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise FusedHeadUnsupported(f"the config of {name} sets {attribute} to {value!r}, not a number")
        active = value is not None and (kind == "softcap" or float(value) != 1.0)
        if re.search(rf"\b{attribute}\b", source) is None:
            if active:
                raise FusedHeadUnsupported(
                    f"the config of {name} sets {attribute}={value}, but {name}.forward does not name it (its source): "
                    "the fused head cannot tell whether the model applies it"
                )
            continue
        found = [(obj, getattr(obj, attribute)) for obj in holders if _holds(obj, attribute)]
        for obj, held in found:
            if isinstance(held, torch.Tensor):
                raise FusedHeadUnsupported(f"{name}.{attribute} is a tensor (a learned scale)")
            if held != value:
                raise FusedHeadUnsupported(
                    f"{type(obj).__name__}.{attribute} is {held!r} where the text config of {name} says {value!r}: "
                    "the fused head cannot tell which one the forward applies"
                )
        if value is None or not active:
            continue
        if not _applies(source, attribute, kind):
            raise FusedHeadUnsupported(
                f"the config of {name} sets {attribute}={value}, but {name}.forward is not seen to {_VERBS[kind]} it "
                "(its source): the fused head cannot tell what the model does with it"
            )
        key = {"softcap": "softcap", "multiplier": "logit_multiplier", "divisor": "logit_divisor"}[kind]
        if key in kwargs:
            raise FusedHeadUnsupported(f"{name} applies two {kind}s after the head ({attribute} and another)")
        if key == "softcap":
            kwargs["softcap"] = float(value)
        elif key == "logit_multiplier":
            kwargs["logit_multiplier"] = float(value)
        else:
            kwargs["logit_divisor"] = float(value)
        neutral.extend((obj, attribute, _NEUTRAL[kind]) for obj, _ in found)
    if "logit_multiplier" in kwargs and "logit_divisor" in kwargs:
        raise FusedHeadUnsupported(f"{name} both multiplies and divides the logits")
    return kwargs, neutral


def _holds(obj: Any, attribute: str) -> bool:
    """Whether ``obj`` (a config, or the model) holds ``attribute`` itself: for a module, in its instance dict or as a
    parameter / buffer (not a submodule, not a method); for a config, any non-callable value (a composite config
    without it raises AttributeError)."""
    if isinstance(obj, torch.nn.Module):
        return attribute in vars(obj) or isinstance(getattr(obj, attribute, None), torch.Tensor)
    return hasattr(obj, attribute) and not callable(getattr(obj, attribute))


@contextlib.contextmanager
def attributes_set(changes: Iterable[tuple[Any, str, Any]]) -> Iterator[None]:
    """Within the block each ``(object, attribute, value)`` is set; after it (also on an error) the previous values are
    back, in reverse order."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for obj, attribute, value in changes:
            saved.append((obj, attribute, getattr(obj, attribute)))
            setattr(obj, attribute, value)
        yield
    finally:
        for obj, attribute, value in reversed(saved):
            setattr(obj, attribute, value)
