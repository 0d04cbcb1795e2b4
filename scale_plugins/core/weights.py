"""The one weighting function, and the counts over an optimizer step it needs.

SCALe is a per-token weight: ``loss = sum_i w_i * ce_i``. With weights computed
from *global* counts (every micro-batch of the optimizer step, every data-parallel
rank), summing the per-micro-batch losses over accumulation steps and ranks gives
exactly the loss of the whole step in one batch, so gradients do not depend on how
the step was split.

normalization="sample" (the default, docs/concepts.md)
    L = sum_seg w_seg * (1 / N_seg) * sum_{samples s with seg} mean_{i in s, seg} ce_i
    w_i = w_seg / (N_seg * n_{s,seg})    N_seg: samples having seg in the step,
                                         n_{s,seg}: tokens of seg in sample s.
normalization="token"
    L = sum_i w_seg(i) * ce_i / sum_i w_seg(i)   over all supervised tokens of the step
    w_i = w_seg / D,  D = sum_seg w_seg * T_seg  (T_seg: tokens of seg in the step).
    With equal weights this is exactly the stock mean cross-entropy.

A segment absent from the step contributes nothing; a step with no supervised
tokens gets all-zero weights (zero loss, zero gradient), never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .segments import SegmentBatch

TOKENS = 0
SAMPLES = 1


def local_counts(batch: SegmentBatch, num_segments: int) -> torch.Tensor:
    """[num_segments, 2] float64: (tokens, samples having the segment) in one micro-batch."""
    per_sample = _per_sample_counts(batch, num_segments)
    return torch.stack([per_sample.sum(0), (per_sample > 0).sum(0).to(per_sample.dtype)], dim=1).double()


def _per_sample_counts(batch: SegmentBatch, num_segments: int) -> torch.Tensor:
    """[num_samples, num_segments]: tokens of each segment in each sample."""
    seg = batch.segment_ids.reshape(-1)
    mask = seg > 0
    keys = batch.sample_ids.reshape(-1)[mask] * num_segments + (seg[mask] - 1)
    counts = torch.bincount(keys, minlength=max(batch.num_samples, 1) * num_segments)
    return counts.view(-1, num_segments)


class StepCounts:
    """Accumulates segment counts over the micro-batches of one optimizer step.

    ``all_reduce`` sums them over data-parallel ranks. Every rank must call it once per
    step, even with nothing to count, so the collective never hangs.
    """

    def __init__(self, num_segments: int):
        self.num_segments = num_segments
        self.counts = torch.zeros(num_segments, 2, dtype=torch.float64)

    def add(self, batch: SegmentBatch) -> None:
        self.counts += local_counts(batch, self.num_segments)

    def all_reduce(self, device: torch.device | str | None = None, group: object | None = None) -> torch.Tensor:
        """Sum over ranks when torch.distributed is initialised; returns the global counts."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            buf = self.counts.to(device if device is not None else "cpu")
            torch.distributed.all_reduce(buf, group=group)
            self.counts = buf.cpu()
        return self.counts


@dataclass
class TokenWeights:
    """Per-token weights for one micro-batch.

    ``loss``: the w_i of ``loss = sum_i w_i ce_i``.
    ``segment``: per-token unit weights whose sum with ce over one segment gives that
    segment's (normalized) loss, for logging: summed over micro-batches and ranks it is
    exactly the segment loss of the step.
    """

    loss: torch.Tensor
    segment: torch.Tensor


def token_weights(
    batch: SegmentBatch,
    segment_weights: Sequence[float],
    global_counts: torch.Tensor,
    normalization: str = "sample",
) -> TokenWeights:
    """The one core weighting function. See the module docstring for the formulas."""
    num_segments = len(segment_weights)
    seg = batch.segment_ids
    supervised = seg > 0
    seg_index = (seg - 1).clamp(min=0)
    w_seg = torch.tensor(segment_weights, dtype=torch.float64)
    counts = global_counts.double().cpu()
    if normalization == "sample":
        per_sample = _per_sample_counts(batch, num_segments).double()
        local_presence = (per_sample > 0).any(0)
        if bool((local_presence & (counts[:, SAMPLES] <= 0)).any()):
            raise ValueError(
                "global segment counts are smaller than this micro-batch's own: were they counted over the step?"
            )
        n_tokens = per_sample[batch.sample_ids.clamp(min=0), seg_index]
        unit = 1.0 / (counts[:, SAMPLES].clamp(min=1.0)[seg_index] * n_tokens.clamp(min=1.0))
        loss_w = w_seg[seg_index] * unit
    elif normalization == "token":
        unit = 1.0 / counts[:, TOKENS].clamp(min=1.0)[seg_index]
        denominator = float((w_seg * counts[:, TOKENS]).sum())
        loss_w = w_seg[seg_index] / denominator if denominator > 0 else torch.zeros(seg.shape, dtype=torch.float64)
    else:
        raise ValueError(f"normalization: {normalization!r} is not one of ['sample', 'token']")
    zero = torch.zeros((), dtype=torch.float64)
    return TokenWeights(
        loss=torch.where(supervised, loss_w, zero).float(),
        segment=torch.where(supervised, unit, zero).float(),
    )
