"""What every transformers-Trainer-based host shares.

:class:`ScaleTrainerMixin` goes in front of a ``transformers.Trainer`` subclass
(TRL's SFTTrainer, AxolotlTrainer, LLaMA-Factory's CustomSeq2SeqTrainer):

- ``get_batch_samples`` (called once per optimizer step with all its micro-batches)
  tags every micro-batch and counts segments over the whole step, summed over
  data-parallel ranks: that is what makes the loss exact under gradient accumulation
  and data parallelism;
- ``compute_loss`` gets per-token weights from the core and the per-token CE from the
  host's cheapest path (``scale_per_token_loss``, overridable), and returns a loss that
  needs no further division by accumulation steps (``loss_is_scaled_for_ga``): the training loss
  (:meth:`~ScaleTrainerMixin.scale_training_loss`) or the evaluation loss
  (:meth:`~ScaleTrainerMixin.scale_evaluation_loss`);
- ``log`` adds the components: ``scale/<segment>_loss``, ``scale/<segment>_weight``,
  ``scale/<segment>_tokens`` and the fallback counters.

What the mixin needs from the trainer it is put in front of is :class:`ScaleTrainerHost` (a ``Protocol``; the
type checker reads the mixin's ``self`` and its ``super()`` calls as that host).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import transformers

from ..core import (
    ScaleConfigError,
    ScaleOptions,
    SegmentBatch,
    SegmentTagger,
    StepCounts,
    TokenWeights,
    components,
    local_counts,
    segment_sums,
    segment_weights,
    shift_targets,
    token_weights,
)
from .head import HeadLoss, per_token_loss
from .internals import LOSS_KWARGS_FLAG, check_trainer

logger = logging.getLogger("scale_plugins")

SEGMENTS_KEY = "scale_segments"  # where get_batch_samples leaves the tagged segments of a micro-batch


class ScaleDataError(RuntimeError):
    """The data cannot give a meaningful SCALe loss under the chosen policy."""


class _Accelerator(Protocol):
    @property
    def num_processes(self) -> int: ...


class ScaleTrainerHost(Protocol):
    """What :class:`ScaleTrainerMixin` needs from the trainer it is put in front of: a ``transformers.Trainer``
    (TRL's SFTTrainer, AxolotlTrainer, LLaMA-Factory's CustomSeq2SeqTrainer) has all of it. Optional host
    features (``parallelism_config``, a model's ``tp_size``) are read with ``getattr``."""

    @property
    def args(self) -> transformers.TrainingArguments: ...

    @property
    def state(self) -> transformers.TrainerState: ...

    @property
    def accelerator(self) -> _Accelerator: ...

    @property
    def model(self) -> torch.nn.Module | None: ...

    #: older transformers (no ``loss_is_scaled_for_ga``): set so the loss is not divided by the accumulation steps
    model_accepts_loss_kwargs: bool

    def get_batch_samples(
        self, epoch_iterator: Iterator[dict[str, Any]], num_batches: int, device: torch.device
    ) -> tuple[list[dict[str, Any]], Any]:
        """The micro-batches of one optimizer step and the host's item count."""
        ...

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Record ``logs`` (the host's loggers and log history)."""
        ...


if TYPE_CHECKING:
    # The type checker sees the mixin as a subclass of its host; at run time its base is `object` and the host
    # trainer follows it in the method resolution order (so `super()` reaches the host's methods).
    _Host = ScaleTrainerHost

    def _trainer_is_a_host(trainer: transformers.Trainer) -> ScaleTrainerHost:
        return trainer  # the type checker holds transformers.Trainer to the protocol (make lint)

else:
    _Host = object


def _text_tokenizer(processing_class: Any) -> Any:
    """Processors (VLMs) wrap a tokenizer; the tagger needs the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)


def _all_reduce_sum(buf: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``buf`` (float64, CPU) summed over the data-parallel ranks (itself in a single process), on the CPU."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        buf = buf.to(device)
        torch.distributed.all_reduce(buf)
        buf = buf.cpu()
    return buf


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
        buf = _all_reduce_sum(
            torch.cat([self.loss, self.tokens, torch.tensor([self.units], dtype=torch.float64)]), device
        )
        n = self.num_segments
        return buf[:n], buf[n : 2 * n], float(buf[-1])


class _EvalLog:
    """Sums over a whole evaluation run (every batch, every rank), so its metrics depend neither on the eval batch
    size, nor on the number of ranks, nor on the training progress."""

    def __init__(self, num_segments: int):
        self.num_segments = num_segments
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(self.num_segments, 4, dtype=torch.float64)  # core.segment_sums columns
        self.ce = torch.zeros(2, dtype=torch.float64)  # CE sum and count over every supervised token
        self.batches = 0.0

    def add(self, ce: torch.Tensor, segments: SegmentBatch, targets: torch.Tensor, ignore_index: int) -> None:
        self.sums += segment_sums(ce, segments, self.num_segments)
        supervised = targets.reshape(-1).to(ce.device) != ignore_index
        flat = ce.detach().reshape(-1)
        self.ce += torch.stack([flat[supervised].double().sum(), supervised.sum().double()]).cpu()
        self.batches += 1

    def reduced(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
        buf = torch.cat([self.sums.reshape(-1), self.ce, torch.tensor([self.batches], dtype=torch.float64)])
        buf = _all_reduce_sum(buf, device)
        n = self.num_segments * 4
        return buf[:n].view(self.num_segments, 4), buf[n : n + 2], float(buf[-1])


def samples_supervised_from_start(segments: SegmentBatch) -> int:
    """How many samples of a micro-batch have one of their first two targets supervised: nothing is masked at their
    start, so their prompt (system / user turns), if they have one, is trained, and SCALe would weigh it as answer.
    Conversational data with an assistant mask, prompt-completion data and every host's prompt masking leave at least
    the first turn's header unsupervised."""
    ids = segments.sample_ids.reshape(-1).long()
    seg = segments.segment_ids.reshape(-1)
    n = ids.numel()
    if n == 0 or segments.num_samples == 0:
        return 0
    positions = torch.arange(n, device=ids.device)
    first = torch.full((segments.num_samples,), n, dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, ids, positions, reduce="amin")
    first = first[first < n]
    second = (first + 1).clamp(max=n - 1)
    supervised = (seg[first] != 0) | ((ids[second] == ids[first]) & (seg[second] != 0))
    return int(supervised.sum())


def _router_aux_loss_coef(model: Any) -> float:
    """The MoE load-balancing coefficient the model's own forward would use (text config for VLM wrappers)."""
    config: Any = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return float(getattr(text_config, "router_aux_loss_coef", 0.0) or 0.0)


@dataclass
class _Forward:
    """One micro-batch through the model: its segments, weights, SCALe loss (float32), per-token CE and outputs."""

    segments: SegmentBatch
    weights: TokenWeights
    loss: torch.Tensor
    ce: torch.Tensor
    outputs: Any


class ScaleTrainerMixin(_Host):
    """Routes a transformers Trainer's loss through the SCALe core. Call :meth:`scale_setup` in ``__init__``.
    Its host is a :class:`ScaleTrainerHost`."""

    # compute_loss returns a loss normalized over the whole optimizer step already
    loss_is_scaled_for_ga = True

    #: How to keep the prompt out of the loss in this host (the supervised-prompt warning names it); adapters override.
    scale_prompt_fix = "train the assistant turns only (an assistant mask) or use prompt-completion data"

    def scale_setup(self, options: ScaleOptions, processing_class: Any) -> None:
        tokenizer = _text_tokenizer(processing_class)
        if tokenizer is None:
            raise ValueError("SCALe needs the tokenizer (processing_class) to find the think/answer tags")
        self.scale_options = options
        self.scale_tagger = SegmentTagger.from_tokenizer(tokenizer, options)
        self._scale_names = options.segment_names
        self._scale_step_counts: torch.Tensor | None = None
        self._scale_weights: tuple[float, ...] = ()
        self._scale_logs = {"train": _ComponentLog(len(self._scale_names))}  # components of the training steps
        self._scale_eval = _EvalLog(len(self._scale_names))
        self._scale_fallbacks: dict[str, int] = defaultdict(int)
        self._scale_warned: set[str] = set()
        # The Trainer internals the exact loss relies on (hf.internals), checked before anything trains. Older
        # transformers Trainers have no `loss_is_scaled_for_ga`; they skip the division by the accumulation steps
        # when the model "accepts loss kwargs".
        if check_trainer() == LOSS_KWARGS_FLAG:
            self.model_accepts_loss_kwargs = True
        self._scale_check_parallelism()
        logger.info("SCALe active: %s", options)

    def _scale_check_parallelism(self) -> None:
        """Tensor / context / sequence parallelism shard a sample's tokens over ranks: the step counts (summed over
        the whole process group) would count a sample once per shard, and the per-sample means would be wrong.
        Refuse them rather than train a silently different loss (docs/concepts.md)."""
        config = getattr(getattr(self, "accelerator", None), "parallelism_config", None)
        if config is None:
            config = getattr(getattr(self, "args", None), "parallelism_config", None)
        sizes = {name: int(getattr(config, name, 1) or 1) for name in ("tp_size", "cp_size", "sp_size")}
        sizes["model tp_size"] = int(getattr(getattr(self, "model", None), "tp_size", None) or 1)
        sharded = {name: size for name, size in sizes.items() if size > 1}
        if sharded:
            raise ScaleConfigError(
                "parallelism: SCALe does not support tensor / context / sequence parallelism yet ("
                + ", ".join(f"{name}={size}" for name, size in sharded.items())
                + "): they shard a sample's tokens over ranks, so its segment counts and per-sample means would be "
                "wrong. Use data parallelism (DDP, DeepSpeed ZeRO, FSDP) instead."
            )

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

    def get_batch_samples(
        self, epoch_iterator: Iterator[dict[str, Any]], num_batches: int, device: torch.device
    ) -> tuple[list[dict[str, Any]], Any]:
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = StepCounts(len(self._scale_names))
        from_start, samples = 0, 0
        for batch in batch_samples:
            segments = self.scale_tag(batch)
            batch[SEGMENTS_KEY] = segments
            counts.add(segments)
            from_start += samples_supervised_from_start(segments)
            samples += segments.num_samples
        if from_start:
            self._scale_count_fallback(
                "steps_with_supervised_prompt",
                f"{from_start} of the {samples} samples of optimizer step {self.state.global_step} on this rank are "
                "supervised from their first token: nothing of their start is masked, so their prompt (system and "
                "user turns) is trained, and SCALe counts every supervised token outside the think block as answer: "
                f"the prompt is weighed as answer. To fix it: {self.scale_prompt_fix}. If the samples really have no "
                "prompt (plain CoT text), this is expected",
            )
        self._scale_check_world_size()
        # Every rank reaches this point once per step, with or without data: the collective cannot hang.
        self._scale_step_counts = counts.all_reduce(device=self.args.device)
        self._scale_check_step(self._scale_step_counts)
        self._scale_logs["train"].units += 1.0 / max(self.args.world_size, 1)
        return batch_samples, num_items_in_batch

    def _scale_check_world_size(self) -> None:
        """Counts are summed over the torch.distributed group and the loss is scaled by accelerate's process count:
        the two must agree, or the gradient is silently off by their ratio (e.g. a launcher that initialised the
        process group while accelerate saw a single process)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            group_size = torch.distributed.get_world_size()
            processes = self.accelerator.num_processes
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
                f"{int(supervised)} supervised tokens of optimizer step {self.state.global_step}: "
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
        state = self.state
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
        result = self.scale_head_loss(model, inputs, weights)
        return result.loss, result.ce, result.outputs

    def scale_head_loss(
        self, model: Any, inputs: dict[str, Any], weights: TokenWeights, stats: bool = False
    ) -> HeadLoss:
        """:func:`hf.head.per_token_loss` with this trainer's options: fused in training, fallbacks counted.
        ``stats=True`` adds TRL's entropy / accuracy sums from the same pass."""
        return per_token_loss(
            model,
            inputs,
            weights,
            self.scale_options.ignore_index,
            fused=bool(model.training),
            stats=stats,
            on_fallback=self._scale_count_fallback,
        )

    def scale_aux_loss(self, model: Any, outputs: Any) -> torch.Tensor | None:
        """The MoE router (load-balancing) loss the stock loss would add: ``router_aux_loss_coef * aux_loss`` when the
        model returned one. The model gets no labels from SCALe, so it never adds it itself."""
        aux = getattr(outputs, "aux_loss", None)
        coef = _router_aux_loss_coef(model)
        if not isinstance(aux, torch.Tensor) or coef == 0.0:
            return None
        return coef * aux.float()

    def scale_aux_loss_factor(self, training: bool) -> float:
        """How the host's stock training loss scales the weighted aux loss of a micro-batch. transformers' Trainer
        (Axolotl, LLaMA-Factory, TRL < 1.16) multiplies the model's whole loss, aux included, by the number of
        processes (token counts are global, DDP averages gradients)."""
        return float(self.accelerator.num_processes) if training else 1.0

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        segments = inputs.pop(SEGMENTS_KEY, None)
        if model.training:
            loss, outputs = self.scale_training_loss(model, inputs, segments)
        else:
            loss, outputs = self.scale_evaluation_loss(model, inputs, segments)
        return (loss, outputs) if return_outputs else loss

    def _scale_forward(self, model: Any, inputs: dict[str, Any], segments: SegmentBatch | None) -> _Forward:
        """The SCALe loss of one micro-batch. ``segments``: tagged by :meth:`get_batch_samples`, weighted with the
        whole optimizer step's counts; None (evaluation, or a host that does not call get_batch_samples): this
        batch is tagged and counted alone."""
        if segments is None:
            segments = self.scale_tag(inputs)
            counts = local_counts(segments, len(self._scale_names))
        elif self._scale_step_counts is None:
            raise RuntimeError("SCALe: a micro-batch tagged by get_batch_samples, but no step counts were made")
        else:
            counts = self._scale_step_counts
        weights = self.scale_weights(segments, counts)
        loss, ce, outputs = self.scale_per_token_loss(model, dict(inputs), segments, weights)
        return _Forward(segments, weights, loss.float(), ce, outputs)

    def scale_training_loss(
        self, model: Any, inputs: dict[str, Any], segments: SegmentBatch | None
    ) -> tuple[torch.Tensor, Any]:
        """The training loss of one micro-batch and the model's outputs; its components go to the ``scale/*`` logs.

        With ``segments`` from :meth:`get_batch_samples` the counts are global: summed over ranks, the per-rank
        losses make the step's loss, but DDP / DeepSpeed average gradients over ranks, so that average is undone.
        """
        step = segments is not None
        forward = self._scale_forward(model, inputs, segments)
        aux = self.scale_aux_loss(model, forward.outputs)
        log = self._scale_logs["train"]
        parts = components(forward.ce, forward.segments, forward.weights, len(self._scale_names))
        log.loss += parts.segment_loss
        log.tokens += parts.segment_tokens
        loss = forward.loss
        if step:
            loss = loss * self.accelerator.num_processes
        if aux is not None:
            loss = loss + aux * self.scale_aux_loss_factor(step)
        return loss, forward.outputs

    def scale_evaluation_loss(
        self, model: Any, inputs: dict[str, Any], segments: SegmentBatch | None
    ) -> tuple[torch.Tensor, Any]:
        """The evaluation loss of one batch and the model's outputs: the plain token-mean CE of the batch, as the
        stock trainer reports it, so eval_loss means the same at every step (not the step's schedule weights); the
        SCALe terms are in eval_scale/* over the whole eval set."""
        forward = self._scale_forward(model, inputs, segments)
        aux = self.scale_aux_loss(model, forward.outputs)
        if inputs.get("labels") is not None:
            targets = shift_targets(inputs["labels"], self.scale_options.ignore_index)
        else:
            targets = inputs["shift_labels"]
        ce = forward.ce
        self._scale_eval.add(ce, forward.segments, targets, self.scale_options.ignore_index)
        supervised = targets.reshape(-1).to(ce.device) != self.scale_options.ignore_index
        loss = ce.reshape(-1)[supervised].sum() / supervised.sum().clamp(min=1)
        if aux is not None:
            loss = loss + aux * self.scale_aux_loss_factor(False)
        return loss, forward.outputs

    # -- logging ----------------------------------------------------------------------------------------------

    def scale_metrics(self, mode: str) -> dict[str, float]:
        if mode == "eval":
            return self._scale_eval_metrics()
        log = self._scale_logs["train"]
        loss, tokens, units = log.reduced(self.args.device)
        log.reset()
        if units <= 0:
            return {}
        metrics: dict[str, float] = {}
        for k, name in enumerate(self._scale_names):
            metrics[f"scale/{name}_loss"] = float(loss[k] / units)
            metrics[f"scale/{name}_tokens"] = float(tokens[k] / units)
        for name, weight in zip(self._scale_names, self._scale_weights):
            metrics[f"scale/{name}_weight"] = float(weight)
        for name, count in self._scale_fallbacks.items():
            metrics[f"scale/{name}"] = float(count)
        if self.scale_options.empty_think == "ignore":
            metrics["scale/empty_think_blocks"] = float(self.scale_tagger.empty_think_blocks)
        return metrics

    def _scale_eval_metrics(self) -> dict[str, float]:
        """Over the whole eval set: ``eval_scale/<segment>_loss`` (the segment's mean CE under the run's
        normalization: mean over samples of the per-sample mean, or over tokens), ``eval_scale/<segment>_tokens``
        (total) and ``eval_scale/ce`` (the plain token-mean CE over every supervised token). None depends on the
        eval batch size, the number of ranks or the schedule: use them (or eval_loss) to pick checkpoints."""
        sums, ce, batches = self._scale_eval.reduced(self.args.device)
        self._scale_eval.reset()
        if batches <= 0:
            return {}
        metrics: dict[str, float] = {}
        by_sample = self.scale_options.normalization == "sample"
        for k, name in enumerate(self._scale_names):
            total, count = (sums[k, 2], sums[k, 3]) if by_sample else (sums[k, 0], sums[k, 1])
            if count > 0:  # a segment absent from the eval set has no mean (no NaN in the logs)
                metrics[f"eval_scale/{name}_loss"] = float(total / count)
            metrics[f"eval_scale/{name}_tokens"] = float(sums[k, 1])
        if ce[1] > 0:
            metrics["eval_scale/ce"] = float(ce[0] / ce[1])
        return metrics

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        mode = "train" if self.model is not None and self.model.training else "eval"
        if not any(key.startswith("train_") for key in logs):  # not the end-of-training summary
            logs.update(self.scale_metrics(mode))
        super().log(logs, *args, **kwargs)
