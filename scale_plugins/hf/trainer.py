"""What every transformers-Trainer-based host shares.

:class:`ScaleTrainerMixin` goes in front of a ``transformers.Trainer`` subclass
(TRL's SFTTrainer, AxolotlTrainer, LLaMA-Factory's CustomSeq2SeqTrainer):

- ``get_batch_samples`` (called once per optimizer step with all its micro-batches)
  tags every micro-batch and counts segments over the whole step, summed over
  data-parallel ranks: that is what makes the loss exact under gradient accumulation
  and data parallelism;
- ``compute_loss`` gets per-token weights from the core and the per-token CE from the
  host's cheapest path (``scale_per_token_loss``, overridable), and returns a loss that
  needs no further division by accumulation steps (``loss_is_scaled_for_ga``);
- ``log`` adds the components: ``scale/<segment>_loss``, ``scale/<segment>_weight``,
  ``scale/<segment>_tokens`` and the fallback counters.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import torch
import transformers

from ..core import (
    ScaleOptions,
    SegmentBatch,
    SegmentTagger,
    StepCounts,
    TokenWeights,
    components,
    local_counts,
    segment_weights,
    token_weights,
)

logger = logging.getLogger("scale_plugins")

SEGMENTS_KEY = "scale_segments"  # where get_batch_samples leaves the tagged segments of a micro-batch


class ScaleDataError(RuntimeError):
    """The data cannot give a meaningful SCALe loss under the chosen policy."""


def _text_tokenizer(processing_class: Any) -> Any:
    """Processors (VLMs) wrap a tokenizer; the tagger needs the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)


class _ComponentLog:
    """Running sums of the logged components of one mode ("train" / "eval")."""

    def __init__(self, num_segments: int):
        self.num_segments = num_segments
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros(self.num_segments, dtype=torch.float64)
        self.tokens = torch.zeros(self.num_segments, dtype=torch.float64)
        self.units = 0.0  # optimizer steps (train) or batches (eval) the sums cover

    def reduced(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
        buf = torch.cat([self.loss, self.tokens, torch.tensor([self.units], dtype=torch.float64)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            buf = buf.to(device)
            torch.distributed.all_reduce(buf)
            buf = buf.cpu()
        n = self.num_segments
        return buf[:n], buf[n : 2 * n], float(buf[-1])


class ScaleTrainerMixin:
    """Routes a transformers Trainer's loss through the SCALe core. Call :meth:`scale_setup` in ``__init__``."""

    # compute_loss returns a loss normalized over the whole optimizer step already
    loss_is_scaled_for_ga = True

    def scale_setup(self, options: ScaleOptions, processing_class: Any) -> None:
        tokenizer = _text_tokenizer(processing_class)
        if tokenizer is None:
            raise ValueError("SCALe needs the tokenizer (processing_class) to find the think/answer tags")
        self.scale_options = options
        self.scale_tagger = SegmentTagger.from_tokenizer(tokenizer, options)
        self._scale_names = options.segment_names
        self._scale_step_counts: torch.Tensor | None = None
        self._scale_weights: tuple[float, ...] = ()
        self._scale_logs = {
            "train": _ComponentLog(len(self._scale_names)),
            "eval": _ComponentLog(len(self._scale_names)),
        }
        self._scale_fallbacks: dict[str, int] = defaultdict(int)
        self._scale_warned: set[str] = set()
        # Older transformers Trainers have no `loss_is_scaled_for_ga`; they skip the division by the
        # accumulation steps when the model "accepts loss kwargs".
        if "loss_is_scaled_for_ga" not in vars(transformers.Trainer):
            self.model_accepts_loss_kwargs = True
        logger.info("SCALe active: %s", options)

    # -- tagging and step counts -------------------------------------------------------------------------------

    def scale_tag(self, inputs: dict[str, Any]) -> SegmentBatch:
        """Segments of one micro-batch, aligned with the token each position predicts."""
        position_ids = inputs.get("position_ids")
        cu_seqlens = inputs.get("cu_seq_lens_q") if position_ids is None else None
        if inputs.get("labels") is not None:
            return self.scale_tagger.tag(inputs["labels"], position_ids, cu_seqlens, shift=True)
        if inputs.get("shift_labels") is not None:
            return self.scale_tagger.tag_shifted(inputs["shift_labels"], position_ids, cu_seqlens)
        raise ValueError("SCALe needs `labels` in every batch; the collator produced: " + ", ".join(inputs))

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)  # type: ignore[misc]
        counts = StepCounts(len(self._scale_names))
        for batch in batch_samples:
            segments = self.scale_tag(batch)
            batch[SEGMENTS_KEY] = segments
            counts.add(segments)
        self._scale_check_world_size()
        # Every rank reaches this point once per step, with or without data: the collective cannot hang.
        self._scale_step_counts = counts.all_reduce(device=self.args.device)  # type: ignore[attr-defined]
        self._scale_check_step(self._scale_step_counts)
        self._scale_logs["train"].units += 1.0 / max(self.args.world_size, 1)  # type: ignore[attr-defined]
        return batch_samples, num_items_in_batch

    def _scale_check_world_size(self) -> None:
        """Counts are summed over the torch.distributed group and the loss is scaled by accelerate's process count:
        the two must agree, or the gradient is silently off by their ratio (e.g. a launcher that initialised the
        process group while accelerate saw a single process)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            group_size = torch.distributed.get_world_size()
            processes = self.accelerator.num_processes  # type: ignore[attr-defined]
            if group_size != processes:
                raise RuntimeError(
                    f"SCALe: torch.distributed has {group_size} ranks but accelerate sees {processes} process(es); "
                    "the loss would be scaled wrongly. Launch with accelerate/torchrun so both agree."
                )

    def _scale_check_step(self, counts: torch.Tensor) -> None:
        supervised = float(counts[:, 0].sum())
        if supervised == 0:
            self._scale_count_fallback(
                "steps_without_supervised_tokens", "a step has no supervised tokens: its loss and gradient are zero"
            )
            return
        if float(counts[1, 0]) == 0:
            self._scale_count_fallback(
                "steps_without_answer",
                "a step has no answer tokens (all think, e.g. truncated traces): only its think term trains",
            )
        if float(counts[0, 0]) == 0:
            message = (
                f"no {self.scale_options.think_open!r}...{self.scale_options.think_close!r} tokens in any of the "
                f"{int(supervised)} supervised tokens of optimizer step {self.state.global_step}: "  # type: ignore[attr-defined]
                "such steps train the answer term only. Check the tags with `scale-plugins inspect`."
            )
            if self.scale_options.on_missing_think == "error":
                raise ScaleDataError(message + " (scale_on_missing_think=error)")
            if self.scale_options.on_missing_think == "warn":
                self._scale_count_fallback("steps_without_think", message)

    def _scale_count_fallback(self, name: str, message: str) -> None:
        self._scale_fallbacks[name] += 1
        if name not in self._scale_warned:
            self._scale_warned.add(name)
            logger.warning("SCALe: %s. Shown once; `scale/%s` counts them in the logs.", message, name)

    # -- loss ------------------------------------------------------------------------------------------------

    def scale_weights(self, segments: SegmentBatch, counts: torch.Tensor) -> TokenWeights:
        state = self.state  # type: ignore[attr-defined]
        self._scale_weights = segment_weights(state.global_step, max(state.max_steps, 1), self.scale_options)
        return token_weights(segments, self._scale_weights, counts, self.scale_options.normalization)

    def scale_per_token_loss(
        self, model: Any, inputs: dict[str, Any], segments: SegmentBatch, weights: TokenWeights
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Default path. Returns (loss, per-token CE, outputs).

        In training the loss is computed inside the LM head from the hidden states (``hf.head``: no [B, T, V]
        logits); where the model does not allow it (a LoRA on lm_head, ...) and in evaluation, from the model's
        logits with the core's chunked weighted CE (a training fallback is logged once, counted in
        ``scale/logits_path``). The model gets no labels, so it never computes the stock loss.
        """
        from .head import per_token_loss

        result = per_token_loss(
            model,
            inputs,
            weights,
            self.scale_options.ignore_index,
            fused=bool(model.training),
            on_fallback=self._scale_count_fallback,
        )
        return result.loss, result.ce, result.outputs

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        segments = inputs.pop(SEGMENTS_KEY, None)
        training = bool(model.training) and segments is not None
        if segments is None:  # evaluation, or a host that does not call get_batch_samples: this batch alone
            segments = self.scale_tag(inputs)
            counts = local_counts(segments, len(self._scale_names))
        else:
            counts = self._scale_step_counts
        weights = self.scale_weights(segments, counts)
        loss, ce, outputs = self.scale_per_token_loss(model, dict(inputs), segments, weights)
        mode = "train" if model.training else "eval"
        log = self._scale_logs[mode]
        parts = components(ce, segments, weights, len(self._scale_names))
        log.loss += parts.segment_loss
        log.tokens += parts.segment_tokens
        if training:
            # Counts are global: summed over ranks, the per-rank losses make the step's loss, but DDP / DeepSpeed
            # average gradients over ranks, so undo that average.
            loss = loss * self.accelerator.num_processes  # type: ignore[attr-defined]
        else:
            log.units += 1.0 / max(self.args.world_size, 1)  # type: ignore[attr-defined]
        return (loss, outputs) if return_outputs else loss

    # -- logging ----------------------------------------------------------------------------------------------

    def scale_metrics(self, mode: str) -> dict[str, float]:
        log = self._scale_logs[mode]
        loss, tokens, units = log.reduced(self.args.device)  # type: ignore[attr-defined]
        log.reset()
        if units <= 0:
            return {}
        prefix = "eval_" if mode == "eval" else ""
        metrics: dict[str, float] = {}
        for k, name in enumerate(self._scale_names):
            metrics[f"{prefix}scale/{name}_loss"] = float(loss[k] / units)
            metrics[f"{prefix}scale/{name}_tokens"] = float(tokens[k] / units)
        if mode == "train":
            for name, weight in zip(self._scale_names, self._scale_weights):
                metrics[f"scale/{name}_weight"] = float(weight)
            for name, count in self._scale_fallbacks.items():
                metrics[f"scale/{name}"] = float(count)
        return metrics

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        mode = "train" if self.model.training else "eval"  # type: ignore[attr-defined]
        if not any(key.startswith("train_") for key in logs):  # not the end-of-training summary
            logs.update(self.scale_metrics(mode))
        super().log(logs, *args, **kwargs)  # type: ignore[misc]
