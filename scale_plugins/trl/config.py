"""``ScaleSFTConfig``: TRL's ``SFTConfig`` plus the SCALe options."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from ..core import ScaleConfigError
from ..hf.fields import ScaleArguments

# TRL's plain negative log-likelihood under its names across versions ("chunked_nll": TRL 1.9's default)
NLL_LOSS_TYPES = ("nll", "chunked_nll")


@dataclass
class ScaleSFTConfig(ScaleArguments, SFTConfig):
    """TRL's ``SFTConfig`` with the SCALe options, each prefixed ``scale_``.

    Parameters, in addition to SFTConfig's (every one documented in docs/options.md; invalid values raise
    :class:`~scale_plugins.core.ScaleConfigError` naming the key when the config is built):
        scale_think_open / scale_think_close (``"<think>"`` / ``"</think>"``): the think segment's tags.
        scale_think_close_segment (``"answer"``): the closer's tokens are ``think``, ``answer`` or ``own`` tokens.
        scale_close_weight (0.5): with ``own``, the constant weight of the closer's own segment ``close``.
        scale_schedule (``"cosine"``): ``cosine``, ``linear``, ``constant`` or ``step``.
        scale_answer_weight_start / scale_answer_weight_end (0.1 / 0.9): answer weight at the first / last step.
        scale_step_at (0.5): progress of the jump for the ``step`` schedule.
        scale_normalization (``"sample"``): ``sample`` (per-sample segment means) or ``token``.
        scale_extra_segments (none): extra tagged segments with their own weights.
        scale_empty_think (``"ignore"``): leave empty think blocks out of the loss, or ``think``.
        scale_on_missing_think (``"warn"``): ``warn``, ``error`` or ``ignore`` for steps without think tokens.
        scale_ignore_index (-100): label value of unsupervised tokens.

    SCALe replaces the SFT loss: ``loss_type`` must be ``"nll"`` (TRL 1.9's default ``"chunked_nll"`` is the same
    loss and is accepted) and label smoothing is refused.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        loss_type = getattr(self, "loss_type", "nll")
        if loss_type == "chunked_nll":
            # TRL 1.9's default: the same NLL through a patched forward that returns no logits. SCALe computes the
            # loss itself (its fused head, no logits either), so TRL's variant is not used.
            self.loss_type = "nll"
        elif loss_type != "nll":
            raise ScaleConfigError(
                f"loss_type: SCALe replaces the SFT loss and needs loss_type='nll', got {loss_type!r}"
            )
        if getattr(self, "label_smoothing_factor", 0.0):
            raise ScaleConfigError("label_smoothing_factor: label smoothing cannot be combined with SCALe; set it to 0")
        self.scale_options()  # validate at config time, naming the key
