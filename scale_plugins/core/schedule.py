"""Segment weights as a pure function of (global step, max steps).

Nothing here has state, so a run resumed from a checkpoint at step k gets exactly
the weights it would have had without the interruption.
"""

from __future__ import annotations

import math

from .options import ScaleConfigError, ScaleOptions


def progress(step: int, max_steps: int) -> float:
    """Training progress of the optimizer step that starts at ``global_step == step`` (0-based).

    p = step / (max_steps - 1), clamped to [0, 1]: the first of ``max_steps`` optimizer steps trains at p = 0
    (the start weights) and the last one at p = 1 (the end weights). A run of one step is its last step: p = 1.
    """
    if max_steps <= 0:
        raise ScaleConfigError(f"max_steps must be > 0 to schedule SCALe weights, got {max_steps}")
    if max_steps == 1:
        return 1.0
    return min(max(step / (max_steps - 1), 0.0), 1.0)


def _interpolate(start: float, end: float, p: float, options: ScaleOptions) -> float:
    if options.schedule == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    if options.schedule == "linear":
        return start + (end - start) * p
    if options.schedule == "step":
        return start if p < options.step_at else end
    return start  # constant


def answer_weight(step: int, max_steps: int, options: ScaleOptions) -> float:
    """w_answer at this step: from ``answer_weight_start`` to ``answer_weight_end``."""
    return _interpolate(options.answer_weight_start, options.answer_weight_end, progress(step, max_steps), options)


def segment_weights(step: int, max_steps: int, options: ScaleOptions) -> tuple[float, ...]:
    """Weights in segment order ``(think, answer, *extras[, close])``; w_think = 1 - w_answer; the closing tag's own
    segment (``think_close_segment="own"``) weighs ``close_weight`` at every step."""
    p = progress(step, max_steps)
    w_answer = _interpolate(options.answer_weight_start, options.answer_weight_end, p, options)
    extras = (_interpolate(e.weight_start, e.weight_end, p, options) for e in options.extra_segments)
    own = (options.close_weight,) if options.think_close_segment == "own" else ()
    return (1.0 - w_answer, w_answer, *extras, *own)
