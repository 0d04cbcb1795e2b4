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


def segment_sums(ce: torch.Tensor, batch: SegmentBatch, num_segments: int) -> torch.Tensor:
    """[num_segments, 4] float64 sums over one micro-batch, for metrics over a whole evaluation set:
    (CE sum, tokens, sum over samples of the sample's mean CE, samples having the segment).

    Summed over batches and ranks, ``[:, 0] / [:, 1]`` is each segment's token-mean CE and ``[:, 2] / [:, 3]``
    its sample-mean CE over the whole set, whatever the batch size or the number of ranks.
    """
    seg = batch.segment_ids.reshape(-1).to(ce.device)
    mask = seg > 0
    keys = batch.sample_ids.reshape(-1).to(ce.device)[mask] * num_segments + (seg[mask] - 1)
    size = max(batch.num_samples, 1) * num_segments
    sums = torch.zeros(size, dtype=torch.float64, device=ce.device).index_add_(
        0, keys, ce.detach().reshape(-1)[mask].double()
    )
    counts = torch.bincount(keys, minlength=size).double()
    means = sums / counts.clamp(min=1.0)
    sums, counts, means = (t.view(-1, num_segments) for t in (sums, counts, means))
    return torch.stack([sums.sum(0), counts.sum(0), means.sum(0), (counts > 0).sum(0).double()], dim=1).cpu()


def scale_loss_from_log_probs(log_probs: torch.Tensor, weights: TokenWeights) -> torch.Tensor:
    """``-sum_i w_i log p_i``; ``log_probs`` aligned with the segment ids, zero where ignored."""
    w = weights.loss.to(device=log_probs.device, dtype=torch.float32)
    return -(w * log_probs.float()).sum()


def scale_loss_from_ce(per_token_ce: torch.Tensor, weights: TokenWeights) -> torch.Tensor:
    """``sum_i w_i ce_i`` for a per-token CE from any kernel (e.g. Liger or CCE with reduction="none")."""
    w = weights.loss.to(device=per_token_ce.device, dtype=torch.float32)
    return (w * per_token_ce.float()).sum()


class _WeightedChunkedCE(torch.autograd.Function):
    """sum_i w_i * CE(logits_i, target_i), in row chunks; returns (float32 loss, float32 per-token CE).

    Per chunk of rows: m = max, e = exp(x - m), s = sum(e), ce = m + log(s) - x[target],
    grad = e * (w / s) - w * onehot.

    float32 / bfloat16 logits: the gradient is written during forward, straight into the gradient buffer (five
    passes over the chunk, no saved log-softmax, no float32 copy of the whole logits); backward only scales it.
    float16 logits: a gradient stored in float16 before the loss scale (GradScaler, DeepSpeed's dynamic loss
    scaling) is applied would flush most entries to zero, and scaling it afterwards overflows. So the forward
    computes the CE only and backward recomputes each chunk in float32, applies the incoming gradient (the loss
    scale) in float32 and only then casts, as the stock loss does through its float32 upcast.
    """

    @staticmethod
    def forward(ctx, logits, targets, weights, chunk_rows):  # type: ignore[override]
        rows = logits.shape[0]
        ce = torch.zeros(rows, dtype=torch.float32, device=logits.device)
        needs_grad = ctx.needs_input_grad[0]
        deferred = needs_grad and logits.dtype == torch.float16
        grad = torch.empty_like(logits) if needs_grad and not deferred else None
        in_place = grad is not None and logits.dtype == torch.float32
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
            if grad is not None:
                buf.mul_(w / total_exp).scatter_add_(1, t, -w)  # w * softmax - w * onehot
                if not in_place:
                    grad[start:stop] = buf
        ctx.deferred = deferred
        ctx.chunk_rows = chunk_rows
        if deferred:
            ctx.save_for_backward(logits, targets, weights)
        else:
            ctx.save_for_backward(grad if needs_grad else logits.new_empty(0))
        ctx.mark_non_differentiable(ce)
        return total, ce

    @staticmethod
    def backward(ctx, grad_total, grad_ce):  # type: ignore[override]
        if ctx.deferred:
            logits, targets, weights = ctx.saved_tensors
            return _recomputed_grad(logits, targets, weights, grad_total.float(), ctx.chunk_rows), None, None, None
        (grad,) = ctx.saved_tensors
        if grad.numel() == 0:
            return None, None, None, None
        if grad_total.numel() == 1 and float(grad_total) == 1.0:  # the usual case: no extra pass
            return grad, None, None, None
        if grad.dtype == torch.float32:
            return grad.mul_(grad_total.float()), None, None, None
        return (grad.float() * grad_total.float()).to(grad.dtype), None, None, None


def _recomputed_grad(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor, chunk_rows: int
) -> torch.Tensor:
    """d(scale * sum_i w_i ce_i)/d logits, chunk by chunk in float32, cast once per chunk."""
    grad = torch.empty_like(logits)
    for start in range(0, logits.shape[0], chunk_rows):
        stop = min(start + chunk_rows, logits.shape[0])
        x = logits[start:stop].float()
        t = targets[start:stop].unsqueeze(1)
        w = weights[start:stop].unsqueeze(1) * scale
        x.sub_(x.max(dim=1, keepdim=True).values).exp_()
        x.mul_(w / x.sum(dim=1, keepdim=True)).scatter_add_(1, t, -w)
        grad[start:stop] = x
    return grad


def check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Targets must be ``ignore_index`` or in ``[0, vocab)``, as stock cross-entropy requires (it raises too)."""
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        values = sorted({int(v) for v in targets[bad].unique()[:5].tolist()})
        raise ValueError(
            f"{int(bad.sum())} target token id(s) outside the vocabulary [0, {vocab}) (e.g. {values}); stock "
            f"cross-entropy refuses them too. Check that the tokenizer matches the model's embedding size, and "
            f"that unsupervised positions use ignore_index={ignore_index}."
        )


def scale_loss_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: TokenWeights,
    ignore_index: int = -100,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SCALe loss from logits [B, T, V] and targets [B, T] that are already aligned
    (``targets[:, t]`` is the token predicted at position t; see ``SegmentTagger.tag``).

    Returns ``(loss, per_token_ce)``, both float32 whatever the logits' dtype; the CE is detached, zero where not
    supervised. A target outside ``[0, vocab)`` (other than ``ignore_index``) raises ``ValueError``.
    """
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_targets = targets.reshape(-1).to(logits.device)
    w = weights.loss.reshape(-1).to(device=logits.device, dtype=torch.float32)
    check_targets(flat_targets, vocab, ignore_index)
    supervised = flat_targets != ignore_index
    w = torch.where(supervised, w, torch.zeros_like(w))
    safe_targets = torch.where(supervised, flat_targets, torch.zeros_like(flat_targets))
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
