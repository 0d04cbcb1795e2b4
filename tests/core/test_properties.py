"""Property-based: random segmentations, degenerate ones included, never give NaN/inf.

Every random value comes from hypothesis (the logits from a drawn seed), so a failure shrinks and replays.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scale_plugins.core import SegmentBatch, StepCounts, scale_loss_from_logits, token_weights

VOCAB = 11


@st.composite
def micro_batches(draw):
    n_micro = draw(st.integers(1, 3))
    batches = []
    for _ in range(n_micro):
        rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 9))
        seg = torch.tensor(
            draw(st.lists(st.lists(st.integers(0, 3), min_size=cols, max_size=cols), min_size=rows, max_size=rows))
        )
        starts = torch.tensor(
            draw(st.lists(st.lists(st.booleans(), min_size=cols, max_size=cols), min_size=rows, max_size=rows))
        )
        starts[:, 0] = True
        sample_ids = torch.cumsum(starts.view(-1).long(), 0).view(rows, cols) - 1
        tokens = torch.tensor(
            draw(
                st.lists(
                    st.lists(st.integers(0, VOCAB - 1), min_size=cols, max_size=cols), min_size=rows, max_size=rows
                )
            )
        )
        targets = torch.where(seg > 0, tokens, torch.full_like(seg, -100))
        seed = draw(st.integers(0, 2**31 - 1))
        batches.append((SegmentBatch(seg, sample_ids, int(sample_ids.max()) + 1), targets, seed))
    return batches


@settings(max_examples=150, deadline=None)
@given(micro_batches(), st.sampled_from(["sample", "token"]), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_finite_and_zero_when_nothing_is_supervised(batches, normalization, w_answer, w_extra):
    weights = (1.0 - w_answer, w_answer, w_extra)  # three segments: think, answer, an extra one
    acc = StepCounts(3)
    for segs, _, _ in batches:
        acc.add(segs)
    total = 0.0
    leaves = []
    for segs, targets, seed in batches:
        generator = torch.Generator().manual_seed(seed)
        logits = (torch.randn(*targets.shape, VOCAB, generator=generator) * 4).requires_grad_()
        leaves.append(logits)
        tw = token_weights(segs, weights, acc.counts, normalization)
        assert torch.isfinite(tw.loss).all() and torch.isfinite(tw.segment).all()
        loss, ce = scale_loss_from_logits(logits, targets, tw)
        assert torch.isfinite(loss) and torch.isfinite(ce).all()
        total = total + loss
    grads = torch.autograd.grad(total, leaves, allow_unused=True) if torch.is_tensor(total) else []
    for g in grads:
        assert g is None or torch.isfinite(g).all()
    if float(acc.counts[:, 0].sum()) == 0:
        assert float(total) == 0.0
        assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads)


def test_nothing_supervised_gives_zero_loss_and_zero_gradient():
    seg = torch.zeros(2, 5, dtype=torch.long)
    batch = SegmentBatch(seg, torch.tensor([[0] * 5, [1] * 5]), 2)
    acc = StepCounts(2)
    acc.add(batch)
    logits = torch.randn(2, 5, VOCAB, requires_grad=True)
    for normalization in ("sample", "token"):
        tw = token_weights(batch, (0.5, 0.5), acc.counts, normalization)
        loss, _ = scale_loss_from_logits(logits, torch.full((2, 5), -100), tw)
        (g,) = torch.autograd.grad(loss, logits)
        assert float(loss) == 0.0 and float(g.abs().sum()) == 0.0


def test_micro_batch_without_answer_tokens_is_fine():
    think_only = SegmentBatch(torch.tensor([[1, 1, 1, 0]]), torch.zeros(1, 4, dtype=torch.long), 1)
    both = SegmentBatch(torch.tensor([[1, 2, 2, 0]]), torch.zeros(1, 4, dtype=torch.long), 1)
    acc = StepCounts(2)
    acc.add(think_only)
    acc.add(both)
    for normalization in ("sample", "token"):
        tw = token_weights(think_only, (0.9, 0.1), acc.counts, normalization)
        loss, _ = scale_loss_from_logits(torch.randn(1, 4, VOCAB), torch.tensor([[1, 2, 3, -100]]), tw)
        assert torch.isfinite(loss) and float(loss) > 0
