"""Framework-free SCALe core: options, schedule, segment tagging, token weights, loss.

Imports torch (and numpy) only.
"""

from .fused import FusedLinearCE, fused_linear_weighted_ce
from .loss import (
    LossComponents,
    components,
    prediction_stats,
    scale_loss_from_ce,
    scale_loss_from_log_probs,
    scale_loss_from_logits,
    segment_sums,
    shift_targets,
)
from .options import OPTION_KEYS, PREFIX, ExtraSegment, ScaleConfigError, ScaleOptions, option_fields
from .schedule import answer_weight, progress, segment_weights
from .segments import ANSWER, IGNORED, THINK, SegmentBatch, SegmentTagger, TokenTable, sample_ids_from
from .weights import StepCounts, TokenWeights, local_counts, token_weights

__all__ = [
    "ANSWER",
    "OPTION_KEYS",
    "PREFIX",
    "IGNORED",
    "THINK",
    "ExtraSegment",
    "FusedLinearCE",
    "LossComponents",
    "ScaleConfigError",
    "ScaleOptions",
    "SegmentBatch",
    "SegmentTagger",
    "StepCounts",
    "TokenTable",
    "TokenWeights",
    "answer_weight",
    "components",
    "fused_linear_weighted_ce",
    "local_counts",
    "option_fields",
    "prediction_stats",
    "progress",
    "sample_ids_from",
    "scale_loss_from_ce",
    "scale_loss_from_log_probs",
    "scale_loss_from_logits",
    "segment_sums",
    "segment_weights",
    "shift_targets",
    "token_weights",
]
