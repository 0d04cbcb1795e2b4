"""SCALe's weighted cross-entropy straight from hidden states and the LM head weight: no ``[N, V]`` logits.

:func:`fused_linear_weighted_ce` computes ``loss = sum_i w_i * ce_i`` with
``ce_i = CE(post(h_i @ W.T + b), t_i)`` in row chunks, where ``post`` is the model's own
logit processing after the head: an optional logit scale (``logit_multiplier``, Cohere;
``logit_divisor``, Granite) and then an optional final soft-cap (``softcap``, Gemma:
``cap * tanh(x / cap)``).

The token weights are known at forward time, so each chunk's gradient w.r.t. its logits is
made in the same pass and turned at once into the chunk's share of the gradients of the
hidden states and of the head weight (and bias), accumulated in float32. Nothing of size
``[N, V]`` exists at any time: one chunk of ``chunk_rows x V`` float32 values (two with a
soft-cap) is the largest transient. The backward pass only applies the incoming gradient
(a loss scale, e.g. 2**16 under fp16) to the float32 gradients, in float32, then casts them
to the input dtypes.

Numerics: the matmuls run in the input dtype (or the autocast dtype), as the stock
``lm_head`` + ``cross_entropy`` do; softmax, CE and the accumulation run in float32. Under
fp16 the gradient matmuls would underflow (the token weights are ~1/N and no loss scale is
known yet), so their inputs are rescaled by powers of two chosen from the chunk's own bounds
and unscaled in float32 after the matmul (exact: powers of two).

Torch only; no framework import.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["FusedLinearCE", "fused_linear_weighted_ce"]

#: float32 values per chunk of logits (64 Mi values = 256 MiB); rows = this // V, at least 1.
CHUNK_VALUES = 2**26

# fp16 gradient matmuls: target magnitudes of their inputs / outputs (fp16 max is 65504, min subnormal 2**-24).
_FP16_DLOGIT_SCALE = 2.0**8  # (p - onehot) * 2**8: probabilities down to 2**-32 survive the cast
_FP16_OUTPUT_BOUND = 2.0**14  # the worst-case |output| of the weight-gradient matmul is kept below this


class FusedLinearCE(NamedTuple):
    """``loss``: float32 scalar ``sum_i w_i ce_i`` (differentiable w.r.t. hidden, weight, bias).
    ``ce``: per-token CE, float32 [N], detached, 0 where the target is ``ignore_index``.
    ``count``, ``entropy_sum``, ``correct`` (only with ``stats=True``, else None; detached): over the
    supervised rows, their number, the sum of the predicted distributions' entropies and the number of
    rows whose argmax is the target (TRL's ``entropy`` and ``mean_token_accuracy`` are the last two over
    the first)."""

    loss: torch.Tensor
    ce: torch.Tensor
    count: torch.Tensor | None = None
    entropy_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None


def _pow2_at_most(x: float) -> float:
    """The largest power of two <= x (x > 0), clamped to a range float32 holds."""
    return 2.0 ** max(-100, min(100, math.floor(math.log2(x))))


class _FusedLinearWeightedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weights, supervised, opts):  # type: ignore[override]
        multiplier, divisor, softcap, chunk_rows, want_stats = opts
        factor = abs(multiplier) / abs(divisor)  # |d logits / d head output|, before the soft-cap
        rows = hidden.shape[0]
        vocab = weight.shape[0]
        device = hidden.device
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        if torch.is_autocast_enabled(device.type):
            compute_dtype = torch.get_autocast_dtype(device.type)
        else:
            if hidden.dtype != weight.dtype:
                raise TypeError(f"hidden states are {hidden.dtype} but the head weight is {weight.dtype}")
            compute_dtype = hidden.dtype
        fp16 = compute_dtype == torch.float16
        row_scale = _FP16_DLOGIT_SCALE if fp16 else 1.0
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=device) if need_b else None
        ce = torch.zeros(rows, dtype=torch.float32, device=device)
        total = torch.zeros((), dtype=torch.float32, device=device)
        entropy = torch.zeros((), dtype=torch.float32, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for start in range(0, rows, chunk_rows):
            stop = min(start + chunk_rows, rows)
            h = hidden[start:stop]
            t = targets[start:stop].unsqueeze(1)
            w = token_weights[start:stop].unsqueeze(1)
            z = torch.matmul(h, weight.t())  # [c, V] in the compute dtype, as the stock head computes it
            if bias is not None:
                z = z + bias
            y = z.float() if z.dtype != torch.float32 else z  # a fresh tensor either way: ours to overwrite
            del z
            if multiplier != 1.0:
                y.mul_(multiplier)
            if divisor != 1.0:
                y.div_(divisor)
            tanh = None
            if softcap is not None:
                tanh = y.div_(softcap).tanh_()
                y = tanh * softcap  # the logits; tanh is kept for the derivative
            m = y.max(dim=1, keepdim=True).values
            target_logit = y.gather(1, t)
            if want_stats:
                top1 = y.argmax(dim=1, keepdim=True) == t
                correct += (top1.squeeze(1) & supervised[start:stop]).sum()
            buf = y.sub_(m)
            shifted = buf.clone() if want_stats else None
            buf.exp_()
            sum_exp = buf.sum(dim=1, keepdim=True)
            log_sum = sum_exp.log()
            chunk_ce = (m + log_sum - target_logit).squeeze(1)
            ce[start:stop] = chunk_ce
            total += (w.squeeze(1) * chunk_ce).sum()
            if shifted is not None:
                # entropy = log(s) - sum_j p_j (y_j - m), with p = e / s
                dot = torch.bmm(buf.unsqueeze(1), shifted.unsqueeze(2)).squeeze(2)
                del shifted
                row_entropy = (log_sum - dot / sum_exp).squeeze(1)
                entropy += torch.where(supervised[start:stop], row_entropy, torch.zeros_like(row_entropy)).sum()
            if not (need_h or need_w or need_b):
                continue
            # d loss / d head output = w * (softmax - onehot) * (1 - tanh^2) * multiplier / divisor
            if fp16:  # unweighted (p - onehot) * 2**8: the weights are applied in float32 after the matmuls
                buf.mul_(row_scale / sum_exp).scatter_add_(1, t, torch.full_like(w, -row_scale))
            else:
                buf.mul_(w / sum_exp).scatter_add_(1, t, -w)
            if tanh is not None:
                buf.mul_(tanh.square_().neg_().add_(1.0))
                del tanh
            if multiplier != 1.0:
                buf.mul_(multiplier)
            if divisor != 1.0:
                buf.div_(divisor)
            if need_b:
                grad_b += (buf * (w / row_scale)).sum(0) if fp16 else buf.sum(0)
            if need_h:
                part = torch.matmul(buf.to(compute_dtype), weight)
                grad_h[start:stop] = part.float().mul_(w / row_scale) if fp16 else part
                del part
            if need_w:
                if fp16:
                    # |sum_i d_ij h_ik| <= s * sum_i w_i * factor * max|h|: one power-of-two scale s per chunk
                    bound = float(w.sum() * h.detach().abs().max()) * factor
                    s = _pow2_at_most(_FP16_OUTPUT_BOUND / bound) if bound > 0 else 1.0
                    d = buf.mul_(w * (s / row_scale)).to(compute_dtype)
                    grad_w.add_(torch.matmul(d.t(), h).float(), alpha=1.0 / s)
                    del d
                elif compute_dtype == torch.float32 and h.dtype == torch.float32:
                    grad_w.addmm_(buf.t(), h)
                else:
                    grad_w.add_(torch.matmul(buf.to(compute_dtype).t(), h).float())
            del buf
        ce = torch.where(supervised, ce, torch.zeros_like(ce))
        stats = torch.stack([supervised.sum().float(), entropy, correct.float()])
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.mark_non_differentiable(ce, stats)
        return total, ce, stats

    @staticmethod
    def backward(ctx, grad_total, grad_ce, grad_stats):  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError("fused_linear_weighted_ce: backward through the same loss twice is not supported")
        g = grad_total.float()
        unit = bool(g == 1.0)
        out = []
        for grad, dtype in zip(ctx.grads, ctx.dtypes):
            if grad is None:
                out.append(None)
            elif dtype == torch.float32:  # ours: scale in place
                out.append(grad if unit else grad.mul_(g))
            elif grad.dim() < 2:
                out.append((grad * g).to(dtype))
            else:  # float32 multiply by the incoming gradient (a loss scale), then cast, a block of rows at a time
                cast = torch.empty(grad.shape, dtype=dtype, device=grad.device)
                step = max(1, CHUNK_VALUES // max(1, grad[0].numel()))
                for start in range(0, grad.shape[0], step):
                    cast[start : start + step] = grad[start : start + step] * g
                out.append(cast)
        ctx.grads = None
        return (*out, None, None, None, None)


def fused_linear_weighted_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    logit_multiplier: float | None = None,
    logit_divisor: float | None = None,
    softcap: float | None = None,
    chunk_rows: int | None = None,
    stats: bool = False,
) -> FusedLinearCE:
    """``sum_i w_i * CE(post(hidden_i @ weight.T + bias), targets_i)`` without ``[N, V]`` logits.

    ``hidden`` [N, H] (any leading shape is flattened), ``weight`` [V, H], ``bias`` [V] or None, ``targets`` and
    ``token_weights`` with N elements. ``post``: ``x * logit_multiplier`` or ``x / logit_divisor``, then
    ``softcap * tanh(x / softcap)``. Targets equal to ``ignore_index`` get weight 0 and CE 0; any other target
    outside ``[0, V)`` raises ``ValueError``. ``chunk_rows``: rows per chunk (default: 64 Mi values / V).
    """
    if logit_multiplier is not None and logit_divisor is not None:
        raise ValueError("give logit_multiplier or logit_divisor, not both")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive, got {softcap}")
    h = hidden.reshape(-1, hidden.shape[-1])
    vocab = weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(f"weight must be [V, {h.shape[1]}], got {list(weight.shape)}")
    t = targets.reshape(-1).to(device=h.device, dtype=torch.long)
    if t.numel() != h.shape[0]:
        raise ValueError(f"{t.numel()} targets for {h.shape[0]} hidden rows")
    supervised = t != ignore_index
    bad = supervised & ((t < 0) | (t >= vocab))
    if bool(bad.any()):
        value = int(t[bad][0])
        raise ValueError(
            f"target {value} is outside the vocabulary [0, {vocab}) and is not ignore_index={ignore_index}"
        )
    w = token_weights.reshape(-1).to(device=h.device, dtype=torch.float32)
    if w.numel() != h.shape[0]:
        raise ValueError(f"{w.numel()} token weights for {h.shape[0]} hidden rows")
    w = torch.where(supervised, w, torch.zeros_like(w))
    safe_t = torch.where(supervised, t, torch.zeros_like(t))
    multiplier = 1.0 if logit_multiplier is None else float(logit_multiplier)
    divisor = 1.0 if logit_divisor is None else float(logit_divisor)
    if multiplier == 0.0 or divisor == 0.0:
        raise ValueError("logit_multiplier / logit_divisor must be non-zero")
    rows = chunk_rows or max(1, CHUNK_VALUES // max(vocab, 1))
    opts = (multiplier, divisor, None if softcap is None else float(softcap), int(rows), bool(stats))
    loss, ce, st = _FusedLinearWeightedCE.apply(h, weight, bias, safe_t, w, supervised, opts)
    ce = ce.view(targets.shape)
    if not stats:
        return FusedLinearCE(loss, ce)
    return FusedLinearCE(loss, ce, st[0].detach(), st[1].detach(), st[2].detach())
