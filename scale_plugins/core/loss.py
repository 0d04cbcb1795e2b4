"""SCALe loss from per-token log-probs or from logits.

Two entry points, one formula (``loss = sum_i w_i * ce_i``):

- :func:`scale_loss_from_log_probs`: the host already has per-token log-probs (TRL's
  fused LM head) or per-token CE (a fused linear-CE kernel with reduction="none").
- :func:`scale_loss_from_logits`: the host has logits [B, T, V]. Cross-entropy is
  computed in row chunks, in float32 per chunk only; the gradient w.r.t. the logits is
  produced in the same pass (the weights are known at forward time), so no float32
  copy of the whole logits and no saved log-softmax ever exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .segments import SegmentBatch
from .weights import TokenWeights

DEFAULT_CHUNK_ROWS = 2048


@dataclass
class LossComponents:
    """What users want logged for one micro-batch (detached, on CPU).

    ``segment_loss[k]``: this micro-batch's share of segment k's normalized loss
    (sums to the step's segment loss over micro-batches and ranks).
    ``segment_tokens[k]``: supervised tokens of segment k in this micro-batch.
    """

    segment_loss: torch.Tensor
    segment_tokens: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)


def components(ce: torch.Tensor, batch: SegmentBatch, weights: TokenWeights, num_segments: int) -> LossComponents:
    seg = batch.segment_ids.reshape(-1).to(ce.device)
    mask = seg > 0
    index = seg[mask] - 1
    ce_unit = ce.detach().reshape(-1)[mask].double() * weights.segment.reshape(-1).to(ce.device)[mask].double()
    segment_loss = torch.zeros(num_segments, dtype=torch.float64, device=ce.device).index_add_(0, index, ce_unit)
    tokens = torch.bincount(index, minlength=num_segments).double()
    return LossComponents(segment_loss.cpu(), tokens.cpu())


def scale_loss_from_log_probs(log_probs: torch.Tensor, weights: TokenWeights) -> torch.Tensor:
    """``-sum_i w_i log p_i``; ``log_probs`` aligned with the segment ids, zero where ignored."""
    w = weights.loss.to(device=log_probs.device, dtype=log_probs.dtype)
    return -(w * log_probs).sum()


def scale_loss_from_ce(per_token_ce: torch.Tensor, weights: TokenWeights) -> torch.Tensor:
    """``sum_i w_i ce_i`` for a per-token CE from any kernel (e.g. Liger or CCE with reduction="none")."""
    w = weights.loss.to(device=per_token_ce.device, dtype=per_token_ce.dtype)
    return (w * per_token_ce).sum()


class _WeightedChunkedCE(torch.autograd.Function):
    """sum_i w_i * CE(logits_i, target_i); the gradient is produced during forward, chunk by chunk.

    Per chunk of rows: m = max, e = exp(x - m) (written straight into the gradient buffer), s = sum(e),
    ce = m + log(s) - x[target], grad = e * (w / s) - w * onehot. Five passes over the chunk, no saved
    log-softmax, no float32 copy of the whole logits.
    """

    @staticmethod
    def forward(ctx, logits, targets, weights, chunk_rows):  # type: ignore[override]
        rows = logits.shape[0]
        ce = torch.zeros(rows, dtype=torch.float32, device=logits.device)
        needs_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if needs_grad else None
        in_place = needs_grad and logits.dtype == torch.float32
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, rows, chunk_rows):
            stop = min(start + chunk_rows, rows)
            x = logits[start:stop]
            t = targets[start:stop].unsqueeze(1)
            w = weights[start:stop].unsqueeze(1)
            buf = grad[start:stop] if in_place else torch.empty(x.shape, dtype=torch.float32, device=x.device)
            m = x.max(dim=1, keepdim=True).values.float()
            torch.sub(x, m, out=buf)
            buf.exp_()
            total_exp = buf.sum(dim=1, keepdim=True)
            chunk_ce = (m + total_exp.log() - x.gather(1, t).float()).squeeze(1)
            ce[start:stop] = chunk_ce
            total += (w.squeeze(1) * chunk_ce).sum()
            if needs_grad:
                buf.mul_(w / total_exp).scatter_add_(1, t, -w)  # w * softmax - w * onehot
                if not in_place:
                    grad[start:stop] = buf
        ctx.save_for_backward(grad if needs_grad else logits.new_empty(0))
        ctx.mark_non_differentiable(ce)
        return total.to(logits.dtype), ce

    @staticmethod
    def backward(ctx, grad_total, grad_ce):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        if grad.numel() == 0:
            return None, None, None, None
        if grad_total.numel() == 1 and float(grad_total) == 1.0:  # the usual case: no extra pass
            return grad, None, None, None
        return grad * grad_total.to(grad.dtype), None, None, None


def scale_loss_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: TokenWeights,
    ignore_index: int = -100,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SCALe loss from logits [B, T, V] and targets [B, T] that are already aligned
    (``targets[:, t]`` is the token predicted at position t; see ``SegmentTagger.tag``).

    Returns ``(loss, per_token_ce)``; the CE is detached, zero where not supervised.
    """
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_targets = targets.reshape(-1).to(logits.device)
    w = weights.loss.reshape(-1).to(device=logits.device, dtype=torch.float32)
    supervised = flat_targets != ignore_index
    w = torch.where(supervised, w, torch.zeros_like(w))
    safe_targets = flat_targets.clamp(min=0, max=vocab - 1)
    loss, ce = _WeightedChunkedCE.apply(flat_logits, safe_targets, w, chunk_rows)
    ce = torch.where(supervised, ce, torch.zeros_like(ce))
    return loss, ce.view(targets.shape)


@torch.no_grad()
def prediction_stats(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, chunk_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Over the supervised positions of logits [B, T, V] and aligned targets [B, T]: ``(count, entropy_sum,
    top1_correct)`` of the predicted distributions, in row chunks of about 16M values (``chunk_rows`` overrides;
    float32 per chunk only, nothing kept).

    The metrics TRL logs (``entropy``, ``mean_token_accuracy``) are ``entropy_sum / count`` and
    ``top1_correct / count``; computing them on ``logits[mask]`` at once would copy every supervised row, a few
    times over.
    """
    vocab = logits.shape[-1]
    flat_logits = logits.detach().reshape(-1, vocab)
    flat_targets = targets.reshape(-1).to(logits.device)
    rows = (flat_targets != ignore_index).nonzero().squeeze(1)
    chunk_rows = chunk_rows or max(1, 2**24 // vocab)
    entropy = torch.zeros((), dtype=torch.float32, device=logits.device)
    correct = torch.zeros((), dtype=torch.long, device=logits.device)
    for start in range(0, rows.numel(), chunk_rows):
        index = rows[start : start + chunk_rows]
        x = flat_logits.index_select(0, index).float()
        log_p = x.log_softmax(-1)
        entropy -= (log_p.exp() * log_p).sum()
        correct += (x.argmax(-1) == flat_targets.index_select(0, index)).sum()
    return torch.tensor(rows.numel(), device=logits.device), entropy, correct


def shift_targets(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``labels[:, 1:]`` padded with one ignored column: the token each position predicts."""
    return torch.cat([labels[..., 1:], torch.full_like(labels[..., :1], ignore_index)], dim=-1)
