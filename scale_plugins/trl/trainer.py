"""``ScaleSFTTrainer``: TRL's ``SFTTrainer`` with the SCALe loss. Takes exactly what SFTTrainer takes."""

from __future__ import annotations

import logging
from typing import Any

import torch
from trl import SFTTrainer

from ..core import (
    ScaleConfigError,
    SegmentBatch,
    TokenWeights,
    scale_loss_from_log_probs,
)
from ..hf import ScaleTrainerMixin
from ..versions import warn_if_untested
from . import internals
from .config import ScaleSFTConfig

logger = logging.getLogger("scale_plugins")


class ScaleSFTTrainer(ScaleTrainerMixin, SFTTrainer):
    """Drop-in ``SFTTrainer``: takes what SFTTrainer takes, with a :class:`ScaleSFTConfig` as ``args``.

    ``args=None`` builds ``ScaleSFTConfig("<model name>-SFT")`` with the SCALe defaults, as SFTTrainer builds
    an ``SFTConfig``; a plain ``SFTConfig`` is refused with a message saying how to convert it (it has no
    ``scale_*`` fields, and silently dropping the user's intent is worse than asking).

    Training computes the loss in SCALe's own fused LM head (``scale_plugins.hf.head``: no [B, T, V] logits, and
    about 0.4x the peak memory of TRL 1.16's fused head, docs/performance.md). Evaluation takes the per-token
    log-probs from TRL's fused LM head where TRL has one (>= 1.16; no logits either), else from the logits.

    Every TRL internal it relies on (TRL's private metrics, its fused head) is named and checked in
    :mod:`scale_plugins.trl.internals`: a TRL without one stops here with an error naming the tested versions.
    """

    scale_prompt_fix = (
        "conversational data (`messages`) needs `assistant_only_loss: true` (a chat template with generation "
        "markers), or use prompt-completion data (`prompt` / `completion` columns, images beside them for a VLM) "
        "with `completion_only_loss` on (TRL's default); `scale-plugins inspect` shows what is supervised"
    )

    def __init__(self, *args: Any, **kwargs: Any):
        warn_if_untested("trl", logger.warning)  # outside the tested versions: once (scale_plugins.versions)
        args_ = kwargs.get("args", args[1] if len(args) > 1 else None)
        if args_ is None:
            model = kwargs.get("model", args[0] if args else None)
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            args_ = ScaleSFTConfig(f"{(name or 'model').rstrip('/').split('/')[-1]}-SFT")
            if len(args) > 1:
                args = (args[0], args_, *args[2:])
            else:
                kwargs["args"] = args_
        if not isinstance(args_, ScaleSFTConfig):
            raise ScaleConfigError(
                f"args: ScaleSFTTrainer needs a ScaleSFTConfig (from scale_plugins.trl), got {type(args_).__name__}; "
                "convert one with ScaleSFTConfig(**sft_config.to_dict(), scale_...=...)"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ScaleConfigError("compute_loss_func: SCALe is the loss; do not pass another one")
        # TRL >= 1.16: SFTTrainer adds its fused LM head (used in evaluation), and its conventions for the MoE aux
        # loss apply
        self._scale_trl_head = internals.check_sft_trainer()
        super().__init__(*args, **kwargs)
        internals.check_state(self, self._scale_trl_head)
        self.scale_setup(self.args.scale_options(), self.processing_class)
        self.scale_find_trl_head()

    def scale_find_trl_head(self) -> None:
        """Whether evaluation can use TRL's fused LM head: TRL's SFTTrainer adds one and the model's forward is the
        one it installs. Where TRL adds one but the model's forward is another, the logits are used (logged once,
        counted in ``scale/trl_head_not_found``)."""
        self._scale_fused_head = internals.is_patched(self.model, self._scale_trl_head)
        if self._scale_trl_head is not None and not self._scale_fused_head:
            self._scale_count_fallback(
                "trl_head_not_found",
                f"TRL's SFTTrainer adds its fused LM head ({internals.FUSED_HEAD_FUNCTION}), but the model's forward is "
                "not the one it installs: evaluation computes the per-token CE from the logits instead",
            )

    def scale_per_token_loss(
        self, model: Any, inputs: dict[str, Any], segments: SegmentBatch, weights: TokenWeights
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            # MoE models: TRL asks for the router logits so the model returns `aux_loss` (VLM wrappers need the kwarg)
            inputs["output_router_logits"] = True
        if self._scale_fused_head and not model.training:
            return self._trl_head_loss(model, inputs, weights)
        # SCALe's own fused head (hf.head; the logits path in evaluation without TRL's head), with TRL's entropy /
        # accuracy sums made in the same chunked pass over the hidden states
        result = self.scale_head_loss(model, inputs, weights, stats=True)
        self._record_trl_metrics(inputs, result.count, result.entropy_sum, result.correct)
        return result.loss, result.ce, result.outputs

    def _trl_head_loss(
        self, model: Any, inputs: dict[str, Any], weights: TokenWeights
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The SCALe loss from the per-token log-probs of TRL's fused LM head (TRL >= 1.16; evaluation)."""
        outputs = model(**inputs, **{internals.FUSED_HEAD_ARG: True})
        log_probs = outputs.log_probs  # aligned with labels[:, 1:] (or with shift_labels, same length)
        if log_probs.shape[-1] == weights.loss.shape[-1] - 1:
            log_probs = torch.nn.functional.pad(log_probs, (0, 1))
        loss = scale_loss_from_log_probs(log_probs, weights)
        entropy = outputs.entropy.detach().sum() if outputs.entropy is not None else None
        correct = outputs.is_top1.sum() if outputs.is_top1 is not None else None
        self._record_trl_metrics(inputs, outputs.label_mask.sum(), entropy, correct)
        return loss, -log_probs.detach(), outputs

    def scale_aux_loss(self, model: Any, outputs: Any) -> torch.Tensor | None:
        aux = getattr(outputs, "aux_loss", None)
        if self._scale_trl_head is not None:
            # TRL >= 1.16 (whichever head computed the CE): its own coefficient and switch (router_aux_loss_coef)
            if not self.aux_loss_enabled or aux is None:
                return None
            weighted = self.router_aux_loss_coef * aux.float()
        else:
            weighted = super().scale_aux_loss(model, outputs)
        if aux is not None and self.aux_loss_enabled:  # TRL's own `aux_loss` metric
            internals.record_aux_loss(self, aux)
        return weighted

    def scale_aux_loss_factor(self, training: bool) -> float:
        if self._scale_trl_head is None:
            return super().scale_aux_loss_factor(training)
        # TRL >= 1.16 adds the weighted aux loss of a micro-batch once, averaged over the accumulation steps, after
        # scaling the CE by the number of processes
        return 1.0 / internals.gradient_accumulation_steps(self) if training else 1.0

    def _record_trl_metrics(
        self,
        inputs: dict[str, Any],
        num_valid: torch.Tensor,
        entropy: torch.Tensor | None,
        correct: torch.Tensor | None,
    ) -> None:
        """TRL's own metrics (entropy, mean_token_accuracy, num_tokens), as SFTTrainer.compute_loss records them."""
        internals.record_metrics(self, inputs, num_valid, entropy, correct)


def _has_fused_head(model: Any) -> bool:
    """Whether TRL patched ``model`` with its fused LM head (TRL >= 1.16 does at SFTTrainer init)."""
    return internals.is_patched(model, internals.fused_head())
