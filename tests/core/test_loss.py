"""SCALe loss against plain references: stock CE, explicit per-sample loops, split invariance."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from scale_plugins.core import (
    ScaleOptions,
    SegmentBatch,
    StepCounts,
    TokenWeights,
    components,
    local_counts,
    scale_loss_from_log_probs,
    scale_loss_from_logits,
    shift_targets,
    token_weights,
)

from .toy import THINK_CLOSE, ContextFreeLM, make_sample, pack, pad_batch, tagger_for

EQUAL = ScaleOptions(schedule="constant", answer_weight_start=0.5, normalization="token")


def stock_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' ForCausalLMLoss: mean CE over labels[:, 1:] != -100, in float32."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def reference_scale_loss(logits, labels, segments: SegmentBatch, weights, normalization) -> torch.Tensor:
    """Explicit loops over samples and segments: the definition in docs/concepts.md, nothing shared with the core."""
    targets = shift_targets(labels)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).clamp(min=0), reduction="none"
    )
    ce = ce.view(targets.shape)
    seg, sid = segments.segment_ids, segments.sample_ids
    total = logits.new_zeros((), dtype=torch.float32)
    if normalization == "sample":
        for k, w in enumerate(weights, start=1):
            means = [
                ce[(seg == k) & (sid == s)].mean()
                for s in range(segments.num_samples)
                if ((seg == k) & (sid == s)).any()
            ]
            if means:
                total = total + w * torch.stack(means).mean()
        return total
    num = sum(w * ce[seg == k].sum() for k, w in enumerate(weights, start=1))
    den = sum(w * (seg == k).sum() for k, w in enumerate(weights, start=1))
    return num / den if den > 0 else total


def batch_of(n: int, seed: int = 0, **kw):
    rng = random.Random(seed)
    return [make_sample(rng, **kw) for _ in range(n)]


def scale_step(model, micro_batches, options: ScaleOptions, step=3, max_steps=10, counts=None):
    """Loss of one optimizer step made of micro-batches (list of (ids, labels, position_ids))."""
    from scale_plugins.core import segment_weights

    tagger = tagger_for(options)
    segs = [tagger.tag(lab, pos) for _, lab, pos in micro_batches]
    if counts is None:
        acc = StepCounts(len(options.segment_names))
        for s in segs:
            acc.add(s)
        counts = acc.counts
    ws = segment_weights(step, max_steps, options)
    total = 0.0
    for (ids, lab, _), s in zip(micro_batches, segs):
        tw = token_weights(s, ws, counts, options.normalization)
        loss, _ = scale_loss_from_logits(model(ids), shift_targets(lab), tw)
        total = total + loss
    return total


def grads(model, loss):
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


def test_equal_weights_token_normalization_is_stock_ce():
    model = ContextFreeLM()
    ids, labels = pad_batch(batch_of(8))
    logits = model(ids)
    ours = scale_step(model, [(ids, labels, None)], EQUAL)
    ref = stock_loss(logits, labels)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads(model, ours), grads(model, stock_loss(model(ids), labels))):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


CLOSER_SETTINGS = [{}, {"think_close_segment": "own", "close_weight": 0.3}]


@pytest.mark.parametrize("closer", CLOSER_SETTINGS)
@pytest.mark.parametrize("normalization", ["sample", "token"])
def test_matches_explicit_reference(normalization, closer):
    from scale_plugins.core import segment_weights

    options = ScaleOptions(normalization=normalization, **closer)
    model = ContextFreeLM()
    samples = batch_of(6, seed=1) + batch_of(1, seed=2, think=False) + batch_of(1, seed=3, answer=False)
    ids, labels = pad_batch(samples)
    segs = tagger_for(options).tag(labels)
    ws = segment_weights(2, 10, options)
    assert len(ws) == 2 + bool(closer) and (not closer or ws[-1] == 0.3)
    tw = token_weights(segs, ws, local_counts(segs, len(ws)), normalization)
    ours, _ = scale_loss_from_logits(model(ids), shift_targets(labels), tw)
    ref = reference_scale_loss(model(ids), labels, segs, ws, normalization)
    assert torch.allclose(ours, ref, atol=1e-6)
    for a, b in zip(
        grads(model, ours), grads(model, reference_scale_loss(model(ids), labels, segs, ws, normalization))
    ):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("closer", CLOSER_SETTINGS)
@pytest.mark.parametrize("normalization", ["sample", "token"])
def test_gradient_accumulation_is_exact(normalization, closer):
    options = ScaleOptions(normalization=normalization, **closer)
    model = ContextFreeLM()
    samples = batch_of(8, seed=4)
    ids, labels = pad_batch(samples)
    full = grads(model, scale_step(model, [(ids, labels, None)], options))
    micro = []
    for i in range(0, 8, 2):
        mid, mlab = pad_batch(samples[i : i + 2])
        micro.append((mid, mlab, None))
    split = grads(model, scale_step(model, micro, options))
    for a, b in zip(full, split):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("closer", CLOSER_SETTINGS)
@pytest.mark.parametrize("normalization", ["sample", "token"])
def test_padding_and_packing_do_not_change_the_loss(normalization, closer):
    options = ScaleOptions(normalization=normalization, **closer)
    model = ContextFreeLM()
    samples = batch_of(5, seed=5)
    # Packed rows mask each sample's first label; do the same in the padded batches so all see one set of targets.
    samples = [(i, [-100] + lab[1:]) for i, lab in samples]
    ids, labels = pad_batch(samples)
    base = scale_step(model, [(ids, labels, None)], options)
    ids2, labels2 = pad_batch(samples, extra_pad=17)
    padded = scale_step(model, [(ids2, labels2, None)], options)
    pids, plabels, pos = pack(samples)
    packed = scale_step(model, [(pids, plabels, pos)], options)
    assert torch.allclose(base, padded, atol=1e-6)
    assert torch.allclose(base, packed, atol=1e-6)
    for a, b in zip(grads(model, base), grads(model, scale_step(model, [(pids, plabels, pos)], options))):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_closers_own_segment_adds_its_weighted_mean_to_the_loss():
    """think_close_segment='own' under sample normalization: the loss of the default setting with the closer taken out
    of think, plus close_weight times the mean over samples of the closer's CE (one token here), by hand."""
    from scale_plugins.core import segment_weights

    model = ContextFreeLM()
    ids, labels = pad_batch(batch_of(4, seed=7))
    own = ScaleOptions(think_close_segment="own", close_weight=0.25)
    segs = tagger_for(own).tag(labels)
    targets = shift_targets(labels)
    assert bool((segs.segment_ids == 3).eq(targets == THINK_CLOSE).all())  # the closer token, nothing else
    ws = segment_weights(5, 10, own)
    tw = token_weights(segs, ws, local_counts(segs, 3), "sample")
    ours, _ = scale_loss_from_logits(model(ids), targets, tw)
    ce = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten().clamp(min=0), reduction="none").view(targets.shape)
    by_hand = 0.0
    for k, w in ((1, ws[0]), (2, ws[1]), (3, 0.25)):
        by_hand += w * torch.stack([ce[r][segs.segment_ids[r] == k].mean() for r in range(4)]).mean()
    assert torch.allclose(ours, by_hand, atol=1e-6)


def test_log_probs_path_equals_logits_path():
    options = ScaleOptions()
    model = ContextFreeLM()
    ids, labels = pad_batch(batch_of(4, seed=6))
    segs = tagger_for(options).tag(labels)
    tw = token_weights(segs, (0.3, 0.7), local_counts(segs, 2), "sample")
    logits = model(ids)
    a, ce = scale_loss_from_logits(logits, shift_targets(labels), tw)
    targets = shift_targets(labels)
    lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    lp = lp.masked_fill(targets == -100, 0.0)
    b = scale_loss_from_log_probs(lp, tw)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(ce, -lp.detach(), atol=1e-5)


def test_components_sum_to_segment_losses():
    options = ScaleOptions(normalization="sample")
    model = ContextFreeLM()
    samples = batch_of(6, seed=7)
    ids, labels = pad_batch(samples)
    segs = tagger_for(options).tag(labels)
    counts = local_counts(segs, 2)
    tw = token_weights(segs, (0.25, 0.75), counts, "sample")
    _, ce = scale_loss_from_logits(model(ids), shift_targets(labels), tw)
    parts = components(ce, segs, tw, 2)
    think_ref = reference_scale_loss(model(ids), labels, segs, (1.0, 0.0), "sample")
    answer_ref = reference_scale_loss(model(ids), labels, segs, (0.0, 1.0), "sample")
    assert math.isclose(parts.segment_loss[0].item(), think_ref.item(), rel_tol=1e-5)
    assert math.isclose(parts.segment_loss[1].item(), answer_ref.item(), rel_tol=1e-5)
    assert parts.segment_tokens.sum().item() == (segs.segment_ids > 0).sum().item()


def _saved_by_autograd(fn):
    """Run ``fn`` and return (result, the tensors autograd saves for backward)."""
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def test_no_float32_copy_of_bf16_logits_is_kept():
    """bf16 logits: autograd keeps one [N, V] buffer, in bf16 (the gradient), never a float32 copy of the logits;
    the loss comes back in float32 and equals the stock loss computed in float32."""
    options = ScaleOptions()
    ids, labels = pad_batch(batch_of(4, seed=8))
    vocab = 64
    logits = torch.randn(*ids.shape, vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = labels.clamp(max=vocab - 1)
    segs = tagger_for(options).tag(labels)
    tw = token_weights(segs, (0.5, 0.5), local_counts(segs, 2), "token")
    (loss, _), saved = _saved_by_autograd(
        lambda: scale_loss_from_logits(logits, shift_targets(labels), tw, chunk_rows=3)
    )
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert [t.dtype for t in big] == [torch.bfloat16]
    (g,) = torch.autograd.grad(loss, logits)
    assert g.dtype == torch.bfloat16
    assert loss.dtype == torch.float32  # not rounded to bf16 (15.6875 for 15.6846)
    ref = stock_loss(logits.float(), labels)
    assert torch.allclose(loss, ref, rtol=1e-5)


def _fp16_case(vocab: int = 32000, rows: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=g) * 2).half()
    targets = torch.randint(0, vocab, (rows,), generator=g)
    w = torch.full((rows,), 0.9 / (64 * 500))  # an answer token's sample-normalized weight
    return logits, targets, w


def _reference_grad(logits: torch.Tensor, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = logits.double().requires_grad_()
    (F.cross_entropy(x, targets, reduction="none") * w.double()).sum().backward()
    return x.grad


@pytest.mark.parametrize("loss_scale", [1.0, 2.0**16])
def test_fp16_gradient_is_as_accurate_as_stock_under_a_loss_scale(loss_scale):
    """fp16 logits, a GradScaler-style loss scale (2**16 is GradScaler's and DeepSpeed's initial scale): SCALe's
    gradient is finite and as accurate as the stock loss's (float32 upcast + cross_entropy)."""
    from scale_plugins.core.loss import _WeightedChunkedCE

    logits, targets, w = _fp16_case()
    ref = _reference_grad(logits, targets, w)

    x = logits.clone().requires_grad_()
    loss, _ = _WeightedChunkedCE.apply(x, targets, w, 16)
    assert loss.dtype == torch.float32
    (loss * loss_scale).backward()
    ours = x.grad.double() / loss_scale

    y = logits.clone().requires_grad_()
    ((F.cross_entropy(y.float(), targets, reduction="none") * w).sum() * loss_scale).backward()
    stock = y.grad.double() / loss_scale

    assert torch.isfinite(x.grad).all()
    err = ((ours - ref).norm() / ref.norm()).item()
    stock_err = ((stock - ref).norm() / ref.norm()).item()
    assert err <= 1.5 * stock_err + 1e-6, (err, stock_err)
    assert (x.grad == 0).float().mean() <= (y.grad == 0).float().mean() + 1e-3


def test_fp16_under_deepspeed_dynamic_loss_scaling():
    """The same through DeepSpeed's fp16 dynamic loss scaler (initial scale 2**16), as `fp16: auto` configures."""
    loss_scaler = pytest.importorskip("deepspeed.runtime.fp16.loss_scaler")
    from scale_plugins.core.loss import _WeightedChunkedCE

    # DeepSpeed's fp16 defaults: initial_scale_power 16, loss_scale_window 1000, hysteresis 2, min_loss_scale 1
    scaler = loss_scaler.DynamicLossScaler(
        init_scale=2**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False
    )
    logits, targets, w = _fp16_case(seed=1)
    x = logits.clone().requires_grad_()
    loss, _ = _WeightedChunkedCE.apply(x, targets, w, 2048)
    scaler.backward(loss)  # (loss * loss_scale).backward(), as DeepSpeed's fp16 engine does
    assert scaler.loss_scale == 2**16
    assert torch.isfinite(x.grad).all()  # an overflow would make DeepSpeed skip the step and halve the scale
    ref = _reference_grad(logits, targets, w)
    ours = x.grad.double() / scaler.loss_scale
    assert ((ours - ref).norm() / ref.norm()).item() < 1e-3


def test_targets_outside_the_vocabulary_raise():
    logits = torch.randn(1, 4, 8, requires_grad=True)
    tw = TokenWeights(torch.ones(1, 4), torch.ones(1, 4))
    for bad in (8, 1000, -5):
        targets = torch.tensor([[1, bad, -100, 2]])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            scale_loss_from_logits(logits, targets, tw)
    with pytest.raises(IndexError):  # what stock cross-entropy does
        F.cross_entropy(logits[0], torch.tensor([1, 8, -100, 2]))
    loss, ce = scale_loss_from_logits(logits, torch.tensor([[1, 7, -100, 0]]), tw)  # in range and ignored: fine
    assert torch.isfinite(loss) and ce[0, 2] == 0


def test_segment_sums_give_batch_size_independent_means():
    """Over a set split into batches of any size, summed segment_sums give the same token and sample means as the
    whole set at once, and match an explicit loop."""
    from scale_plugins.core import segment_sums

    options = ScaleOptions()
    samples = batch_of(6, seed=21)
    ids, labels = pad_batch(samples)
    segs = tagger_for(options).tag(labels)
    ce = torch.rand(labels.shape, dtype=torch.float64)
    whole = segment_sums(ce, segs, 2)
    parts = sum(
        segment_sums(ce[i : i + 2], SegmentBatch(segs.segment_ids[i : i + 2], segs.sample_ids[i : i + 2] - i, 2), 2)
        for i in range(0, 6, 2)
    )
    assert torch.allclose(whole, parts)
    for k, segment in enumerate((1, 2)):
        means = [
            ce[r][segs.segment_ids[r] == segment].mean().item()
            for r in range(6)
            if (segs.segment_ids[r] == segment).any()
        ]
        assert whole[k, 2] / whole[k, 3] == pytest.approx(sum(means) / len(means))
        assert whole[k, 0] / whole[k, 1] == pytest.approx(ce[segs.segment_ids == segment].mean().item())


@pytest.mark.parametrize("chunk_rows", [3, 2048])
def test_prediction_stats_match_the_whole_tensor_computation(chunk_rows):
    from scale_plugins.core import prediction_stats

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[0, :4] = -100
    targets[2] = -100
    mask = targets != -100
    x = logits[mask]
    p = x.softmax(-1)
    entropy = -(p * p.log()).sum()
    correct = (x.argmax(-1) == targets[mask]).sum()
    count, got_entropy, got_correct = prediction_stats(logits, targets, chunk_rows=chunk_rows)
    assert int(count) == int(mask.sum()) == 10
    assert torch.allclose(got_entropy, entropy, atol=1e-5)
    assert int(got_correct) == int(correct)
    assert [int(v) for v in prediction_stats(logits, torch.full_like(targets, -100))] == [0, 0, 0]
