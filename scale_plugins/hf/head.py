"""SCALe's loss computed inside the LM head of a transformers model: no ``[B, T, V]`` logits.

:func:`per_token_loss` runs the model with its output-embedding module's ``forward`` replaced, for
that call only, by a function that computes :func:`~scale_plugins.core.fused_linear_weighted_ce`
from the hidden states the model hands its head, and returns the loss as a ``[1, 1, 1]`` tensor
in place of the logits. Because the replacement happens inside the module's own call, module
hooks still run around it (DeepSpeed ZeRO-3 gathers the partitioned head weight for it and again
for its backward; accelerate's device hooks are kept), and the loss the trainer backpropagates is
the tensor the model returns as ``logits``.

The model's own processing after the head (Gemma's final logit soft-capping, Cohere's
``logit_scale``, Granite's ``logits_scaling``, ``output_multiplier``, ...) is read from the model's
text config as TRL's own fused head reads it, verified against the model class's ``forward``,
switched off for the call, and applied inside the fused function instead
(:func:`scale_plugins.hf.internals.logit_processing`: every reading of transformers internals lives
there). After the call the value the model returned must equal the one the head returned; a model
that changed it in some other way is not used again with the fused head (its loss is recomputed from
the logits, and the reason is reported).

Falls back to the logits path (the core's chunked weighted CE over ``outputs.logits``) with a named
reason when the head is not a plain ``torch.nn.Linear`` (a LoRA adapter or ``modules_to_save`` on
``lm_head``, a quantized head), when the model has no output embeddings, when its forward cannot be
read or is not seen to apply a setting its config gives, and in evaluation (predictions need the
logits).

Imports torch and transformers-level code only (no trl / axolotl / llamafactory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core import (
    FusedLinearCE,
    TokenWeights,
    fused_linear_weighted_ce,
    prediction_stats,
    scale_loss_from_logits,
    shift_targets,
)
from .internals import (
    FusedHeadUnsupported,
    PostKwargs,
    attributes_set,
    head_forward_attribute,
    logit_processing,
    unwrap,
)

__all__ = ["HeadLoss", "FALLBACK_NAME", "FusedHeadUnsupported", "fused_head_unsupported", "per_token_loss"]

#: the fallback counter: ``scale/logits_path`` counts training micro-batches whose loss needed the full logits
FALLBACK_NAME = "logits_path"

_UNSUPPORTED_ATTR = "_scale_fused_head_unsupported"


@dataclass
class HeadLoss:
    """``loss`` (float32 scalar ``sum_i w_i ce_i``), ``ce`` (per-token CE [B, T], detached), the model's
    ``outputs`` (``logits`` is None on the fused path), whether the fused head was used, and with ``stats=True``
    TRL's metric sums over the supervised tokens: ``count``, ``entropy_sum``, ``correct``."""

    loss: torch.Tensor
    ce: torch.Tensor
    outputs: Any
    fused: bool
    count: torch.Tensor | None = None
    entropy_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None


@dataclass
class _FusedPlan:
    """What the fused path needs of a model it can use: the unwrapped model, its head, the head's post-processing
    arguments and the attributes that switch that processing off in the model's forward."""

    base: Any
    head: torch.nn.Linear
    post: PostKwargs
    neutral: list[tuple[Any, str, Any]]


def _fused_plan(model: Any) -> _FusedPlan:
    """How to run ``model`` with the fused head; raises :class:`FusedHeadUnsupported` (with the reason) where the
    fused head cannot be used."""
    base = unwrap(model)
    cached = getattr(base, _UNSUPPORTED_ATTR, None)
    if cached:
        raise FusedHeadUnsupported(str(cached))
    get = getattr(base, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise FusedHeadUnsupported(f"{type(base).__name__} has no output embeddings (get_output_embeddings() is None)")
    if type(head) is not torch.nn.Linear:
        kind = f"{type(head).__module__}.{type(head).__qualname__}"
        raise FusedHeadUnsupported(
            f"the LM head is {kind}, not a plain torch.nn.Linear (e.g. a LoRA adapter or modules_to_save on lm_head)"
        )
    post, neutral = logit_processing(base)
    return _FusedPlan(base, head, post, neutral)


def fused_head_unsupported(model: Any) -> str | None:
    """Why the fused head cannot be used with ``model`` (None: it can)."""
    try:
        _fused_plan(model)
    except FusedHeadUnsupported as err:
        return str(err)
    return None


def _logits_path(
    model: Any, inputs: dict[str, Any], targets: torch.Tensor, weights: TokenWeights, ignore_index: int, stats: bool
) -> HeadLoss:
    outputs = model(**inputs)
    loss, ce = scale_loss_from_logits(outputs.logits, targets, weights, ignore_index)
    result = HeadLoss(loss, ce, outputs, fused=False)
    if stats:
        result.count, result.entropy_sum, result.correct = prediction_stats(outputs.logits, targets, ignore_index)
    return result


def _fused_path(
    model: Any, inputs: dict[str, Any], targets: torch.Tensor, weights: TokenWeights, ignore_index: int, stats: bool
) -> HeadLoss:
    """The loss from inside the LM head; raises :class:`FusedHeadUnsupported` where the model does not allow it
    (found before the forward, or from what the forward returned: then the model is marked, not tried again)."""
    plan = _fused_plan(model)
    base, head, post, neutral = plan.base, plan.head, plan.post, plan.neutral
    state: dict[str, FusedLinearCE] = {}

    def fused_forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if "result" in state:
            raise RuntimeError("SCALe fused head: the model called its LM head twice in one forward")
        if hidden_states.shape[:-1] != targets.shape:
            raise RuntimeError(
                f"SCALe fused head: the LM head got hidden states {list(hidden_states.shape)} for targets "
                f"{list(targets.shape)} (logits_to_keep?)"
            )
        state["result"] = result = fused_linear_weighted_ce(
            hidden_states,
            head.weight,
            targets.to(hidden_states.device),
            weights.loss.to(hidden_states.device),
            head.bias,
            ignore_index=ignore_index,
            stats=stats,
            **post,
        )
        return result.loss.reshape(1, 1, 1)

    # accelerate's device hooks replace `forward` and call the module's own: replace that one, keep the hook
    attr = head_forward_attribute(head)
    had_own = attr in vars(head)
    previous = vars(head).get(attr)
    setattr(head, attr, fused_forward)
    try:
        with attributes_set(neutral):
            outputs = model(**inputs)
    finally:
        if had_own:
            setattr(head, attr, previous)
        else:
            delattr(head, attr)
    result = state.get("result")
    if result is None:
        raise RuntimeError(f"SCALe fused head: {type(base).__name__}.forward never called its LM head")
    carrier = getattr(outputs, "logits", None)
    if (
        not isinstance(carrier, torch.Tensor)
        or carrier.shape != (1, 1, 1)
        or not torch.equal(carrier.detach().float(), result.loss.detach().reshape(1, 1, 1))
    ):
        reason = f"{type(base).__name__}.forward changes the LM head's output in a way the fused head does not know"
        setattr(base, _UNSUPPORTED_ATTR, reason)
        raise FusedHeadUnsupported(reason)
    outputs["logits"] = None
    ce = result.ce.view(targets.shape)
    return HeadLoss(carrier.reshape(()), ce, outputs, True, result.count, result.entropy_sum, result.correct)


def per_token_loss(
    model: Any,
    inputs: dict[str, Any],
    weights: TokenWeights,
    ignore_index: int = -100,
    *,
    fused: bool = True,
    stats: bool = False,
    on_fallback: Callable[[str, str], None] | None = None,
) -> HeadLoss:
    """SCALe's loss for one micro-batch: ``sum_i w_i ce_i`` with the model's per-token CE.

    ``inputs``: the model's keyword arguments with ``labels`` (or ``shift_labels``), not modified. The model gets
    no labels, so it never computes its stock loss. ``fused``: compute the loss inside the LM head (no logits) when
    the model allows it; otherwise, or when it does not (``on_fallback(FALLBACK_NAME, reason)`` is called), from
    the logits. ``stats``: also TRL's entropy / top-1 sums over the supervised tokens.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels", None)
    shifted = inputs.pop("shift_labels", None)
    if labels is not None:
        targets = shift_targets(labels, ignore_index)
    elif shifted is not None:
        targets = shifted
    else:
        raise ValueError("SCALe needs `labels` (or `shift_labels`) in the batch")
    if fused:
        try:
            return _fused_path(model, inputs, targets, weights, ignore_index, stats)
        except FusedHeadUnsupported as reason:
            if on_fallback is not None:
                on_fallback(FALLBACK_NAME, f"the loss is computed from the full [B, T, V] logits: {reason}")
    return _logits_path(model, inputs, targets, weights, ignore_index, stats)
