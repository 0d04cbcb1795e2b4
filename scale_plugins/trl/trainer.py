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
        super().__init__(*args, **kwargs)
        self.scale_setup(self.args.scale_options(), self.processing_class)
        # TRL >= 1.16: its fused LM head is there (used in evaluation) and its conventions for the MoE aux loss apply
        self._scale_fused_head = _has_fused_head(self.model)

    def scale_per_token_loss(
        self, model: Any, inputs: dict[str, Any], segments: SegmentBatch, weights: TokenWeights
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        inputs["use_cache"] = False
        if getattr(self, "aux_loss_enabled", False):
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
        outputs = model(**inputs, fused_lm_head=True)
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
        if self._scale_fused_head:
            # TRL >= 1.16 (whichever head computed the CE): its own coefficient and switch (router_aux_loss_coef)
            if not getattr(self, "aux_loss_enabled", False) or aux is None:
                return None
            weighted = self.router_aux_loss_coef * aux.float()
        else:
            weighted = super().scale_aux_loss(model, outputs)
        if aux is not None and getattr(self, "aux_loss_enabled", False):  # TRL's own `aux_loss` metric
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux.detach()).mean().item())
        return weighted

    def scale_aux_loss_factor(self, training: bool) -> float:
        if not self._scale_fused_head:
            return super().scale_aux_loss_factor(training)
        # TRL >= 1.16 adds the weighted aux loss of a micro-batch once, averaged over the accumulation steps, after
        # scaling the CE by the number of processes
        return 1.0 / max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1) if training else 1.0

    def _record_trl_metrics(
        self,
        inputs: dict[str, Any],
        num_valid: torch.Tensor,
        entropy: torch.Tensor | None,
        correct: torch.Tensor | None,
    ) -> None:
        """TRL's own metrics (entropy, mean_token_accuracy, num_tokens), as SFTTrainer.compute_loss records them."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(num_valid).sum()
        if entropy is not None:
            entropy = gather(entropy).sum()
            self._metrics[mode]["entropy"].append((entropy / num_valid).item() if num_valid > 0 else 0.0)
        if correct is not None:
            correct = gather(correct).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = gather(inputs["attention_mask"].sum()).sum().item()
            else:
                tokens = (
                    gather(torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device))
                    .sum()
                    .item()
                )
            self._total_train_tokens += tokens // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


def _has_fused_head(model: Any) -> bool:
    """Whether TRL patched the model with its fused LM head (TRL >= 1.x does at SFTTrainer init)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = getattr(base, "forward", None)
    code = getattr(getattr(forward, "__func__", forward), "__code__", None)
    return code is not None and "fused_lm_head" in code.co_varnames
