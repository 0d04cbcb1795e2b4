"""CUDA checks of the chunked loss: bf16 correctness and peak memory vs the stock loss (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scale_plugins.core import SegmentBatch, local_counts, scale_loss_from_logits, shift_targets, token_weights

pytestmark = pytest.mark.gpu


def _batch(rows: int, cols: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, vocab, (rows, cols), generator=g)
    labels[:, : cols // 10] = -100
    seg = torch.where(labels >= 0, 2, 0)
    seg[:, cols // 10 : cols // 2] = 1
    segments = SegmentBatch(
        shift_targets(seg, 0), torch.arange(rows).unsqueeze(1).expand(rows, cols).contiguous(), rows
    )
    return labels, segments


def test_bf16_equal_weights_match_stock_on_cuda():
    vocab = 32000
    labels, segments = _batch(2, 1024, vocab)
    logits = torch.randn(2, 1024, vocab, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weights = token_weights(segments, (0.5, 0.5), local_counts(segments, 2), "token")
    ours, _ = scale_loss_from_logits(logits, shift_targets(labels).cuda(), weights)
    (g_ours,) = torch.autograd.grad(ours, logits)
    stock = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab), labels[:, 1:].reshape(-1).cuda(), ignore_index=-100
    )
    (g_stock,) = torch.autograd.grad(stock, logits)
    assert torch.allclose(ours.float(), stock, rtol=1e-2)
    assert torch.allclose(g_ours.float(), g_stock.float(), atol=1e-6, rtol=5e-2)


def test_peak_memory_below_stock_on_cuda():
    vocab = 151936
    labels, segments = _batch(1, 4096, vocab)
    weights = token_weights(segments, (0.3, 0.7), local_counts(segments, 2), "sample")
    targets = shift_targets(labels).cuda()

    def peak(fn):
        logits = torch.randn(1, 4096, vocab, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.autograd.grad(fn(logits), logits)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    stock = peak(
        lambda x: F.cross_entropy(
            x[:, :-1].float().reshape(-1, vocab), labels[:, 1:].reshape(-1).cuda(), ignore_index=-100
        )
    )
    ours = peak(lambda x: scale_loss_from_logits(x, targets, weights)[0])
    assert ours < stock
