"""fused_linear_weighted_ce against a plain reference: logits = h @ W.T (+ b), scaling, soft-cap, then
F.cross_entropy(reduction="none") weighted and summed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scale_plugins.core import fused_linear_weighted_ce, prediction_stats

IGNORE = -100


def reference(h, W, t, w, b=None, multiplier=None, divisor=None, softcap=None):
    z = h @ W.T
    if b is not None:
        z = z + b
    if multiplier is not None:
        z = z * multiplier
    if divisor is not None:
        z = z / divisor
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ce = F.cross_entropy(z.float() if z.dtype != torch.float64 else z, t, reduction="none", ignore_index=IGNORE)
    weights = torch.where(t != IGNORE, w.to(ce.dtype), torch.zeros_like(ce))
    return (weights * ce).sum(), ce, z


def problem(n=37, hidden=16, vocab=50, seed=0, bias=False, ignored=(3, 4, 20)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    W = torch.randn(vocab, hidden, generator=g) * hidden**-0.5 * 3
    b = torch.randn(vocab, generator=g) if bias else None
    t = torch.randint(0, vocab, (n,), generator=g)
    t[list(ignored)] = IGNORE
    w = torch.rand(n, generator=g) + 0.1
    return h, W, b, t, w


def leaves(*tensors):
    return [None if x is None else x.clone().requires_grad_() for x in tensors]


def close(a, b, rtol=1e-5):
    a, b = a.detach(), b.detach()
    scale = b.abs().max().clamp_min(1e-12)
    assert float((a - b).abs().max() / scale) <= rtol, float((a - b).abs().max() / scale)


POST = [
    {},
    {"multiplier": 0.0625},  # Cohere: logits * logit_scale
    {"divisor": 4.0},  # Granite: logits / logits_scaling
    {"softcap": 3.0},  # Gemma: cap * tanh(x / cap)
    {"multiplier": 2.0, "softcap": 5.0},
]


@pytest.mark.parametrize("post", POST, ids=lambda p: "-".join(p) or "plain")
@pytest.mark.parametrize("chunk_rows", [1, 5, 16, 37, None])
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_equals_reference(post, chunk_rows, bias):
    h, W, b, t, w = problem(bias=bias)
    h1, W1, b1 = leaves(h, W, b)
    out = fused_linear_weighted_ce(
        h1,
        W1,
        t,
        w,
        b1,
        logit_multiplier=post.get("multiplier"),
        logit_divisor=post.get("divisor"),
        softcap=post.get("softcap"),
        chunk_rows=chunk_rows,
    )
    assert out.loss.dtype == torch.float32 and out.loss.dim() == 0
    assert not out.ce.requires_grad
    h2, W2, b2 = leaves(h, W, b)
    ref_loss, ref_ce, _ = reference(h2, W2, t, w, b2, **post)
    close(out.loss.detach(), ref_loss.detach())
    close(out.ce, ref_ce)
    inputs = [x for x in (h1, W1, b1) if x is not None]
    ref_inputs = [x for x in (h2, W2, b2) if x is not None]
    for got, want in zip(torch.autograd.grad(out.loss, inputs), torch.autograd.grad(ref_loss, ref_inputs)):
        assert got.dtype == torch.float32
        close(got, want)


def test_incoming_gradient_is_applied():
    h, W, b, t, w = problem(bias=True)
    h1, W1, b1 = leaves(h, W, b)
    out = fused_linear_weighted_ce(h1, W1, t, w, b1, chunk_rows=6)
    (out.loss * 3.5).backward()
    h2, W2, b2 = leaves(h, W, b)
    (reference(h2, W2, t, w, b2)[0] * 3.5).backward()
    for got, want in ((h1, h2), (W1, W2), (b1, b2)):
        close(got.grad, want.grad)


def test_ignore_index_rows_get_no_loss_and_no_gradient():
    h, W, _, t, w = problem()
    ignored = t == IGNORE
    assert ignored.any()
    w = w * 100  # large weights on the ignored rows must not matter
    h1, W1 = leaves(h, W)
    out = fused_linear_weighted_ce(h1, W1, t, w, chunk_rows=7)
    out.loss.backward()
    assert torch.all(out.ce[ignored] == 0)
    assert torch.all(h1.grad[ignored] == 0)
    assert torch.all(h1.grad[~ignored].abs().sum(1) > 0)
    kept = ~ignored
    ref = reference(h[kept], W, t[kept], w[kept])[0]
    close(out.loss.detach(), ref)


@pytest.mark.parametrize("bad", [50, 51, -1, -99])
def test_out_of_range_target_raises(bad):
    h, W, _, t, w = problem(vocab=50)
    t[7] = bad
    with pytest.raises((IndexError, RuntimeError)):  # what stock cross_entropy does
        F.cross_entropy(h @ W.T, t, ignore_index=IGNORE)
    with pytest.raises(ValueError, match=f"target {bad} is outside the vocabulary"):
        fused_linear_weighted_ce(h, W, t, w)


def test_tied_weights_get_the_summed_gradient():
    """The same parameter is the embedding and the head: its gradient is the sum of both uses."""
    g = torch.Generator().manual_seed(3)
    vocab, hidden, n = 40, 12, 29
    E0 = torch.randn(vocab, hidden, generator=g) * 0.5
    A = torch.randn(hidden, hidden, generator=g)
    ids = torch.randint(0, vocab, (n,), generator=g)
    t = torch.roll(ids, -1)
    t[-1] = IGNORE
    w = torch.rand(n, generator=g)
    grads = []
    for fused in (True, False):
        E = E0.clone().requires_grad_()
        h = torch.tanh(E[ids] @ A)
        if fused:
            loss = fused_linear_weighted_ce(h, E, t, w, chunk_rows=4).loss
        else:
            loss = reference(h, E, t, w)[0]
        (grad,) = torch.autograd.grad(loss, [E])
        grads.append(grad)
    close(grads[0], grads[1])
    # and both uses contribute: the head part alone differs
    E = E0.clone().requires_grad_()
    head_only = torch.autograd.grad(reference(torch.tanh(E0[ids] @ A), E, t, w)[0], [E])[0]
    assert float((head_only - grads[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_with_loss_scale(dtype):
    """bf16 / fp16 inputs, a 2**16 loss scale (GradScaler, DeepSpeed): finite gradients at least as close to a
    float64 reference as the stock head + cross_entropy in the same dtype. Weights ~ 1/N (token normalization), so
    the unscaled gradient of the logits (~1e-9) would underflow in fp16."""
    scale = 2.0**16
    n, hidden, vocab = 96, 32, 3000
    g = torch.Generator().manual_seed(5)
    h64 = torch.randn(n, hidden, generator=g, dtype=torch.float64) * 2
    W64 = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * hidden**-0.5
    t = torch.randint(0, vocab, (n,), generator=g)
    t[:10] = IGNORE
    w = torch.full((n,), 1.0 / (n - 10), dtype=torch.float64)
    h, W = h64.to(dtype), W64.to(dtype)
    # float64 reference on the same (rounded) inputs
    hr, Wr = leaves(h.double(), W.double())
    ref_loss = reference(hr, Wr, t, w)[0]
    ref = torch.autograd.grad(ref_loss, [hr, Wr])
    # stock: logits in the dtype, cross_entropy upcasts
    hs, Ws = leaves(h, W)
    stock_loss = reference(hs, Ws, t, w.float())[0]
    stock = torch.autograd.grad(stock_loss * scale, [hs, Ws])
    # fused
    hf, Wf = leaves(h, W)
    out = fused_linear_weighted_ce(hf, Wf, t, w.float(), chunk_rows=13)
    fused = torch.autograd.grad(out.loss * scale, [hf, Wf])
    assert abs(float(out.loss.detach()) - float(ref_loss.detach())) <= 1e-2 * abs(float(ref_loss.detach()))
    for got, base, want in zip(fused, stock, ref):
        assert got.dtype == dtype
        assert torch.isfinite(got).all()
        err = float((got.double() / scale - want).abs().max())
        stock_err = float((base.double() / scale - want).abs().max())
        assert err <= max(1.5 * stock_err, 1e-3 * float(want.abs().max())), (err, stock_err)


def test_fp16_large_loss_scale_overflows_only_where_the_true_gradient_does():
    """The loss scale is applied in float32, then cast: a scaled gradient is inf only where its true value is beyond
    fp16's range (as a dynamic loss scaler expects), and finite and accurate everywhere else."""
    h, W, _, t, w = problem(n=64, hidden=16, vocab=300)
    w = w / w.sum()
    scale = 2.0**22
    hr, Wr = leaves(h.half().double(), W.half().double())
    ref = torch.autograd.grad(reference(hr, Wr, t, w.double())[0], [hr, Wr])
    hf, Wf = leaves(h.half(), W.half())
    out = fused_linear_weighted_ce(hf, Wf, t, w)
    for got, want in zip(torch.autograd.grad(out.loss * scale, [hf, Wf]), ref):
        true = want * scale
        representable = true.abs() < 60000
        assert (~representable).any() and representable.any()
        assert torch.isinf(got[true.abs() > 70000]).all()
        got, true = got[representable].double(), true[representable]
        assert float((got - true).abs().max()) <= 2e-2 * float(true.abs().max())


def test_stats_equal_prediction_stats_over_logits():
    h, W, _, t, w = problem()
    for softcap in (None, 2.0):
        out = fused_linear_weighted_ce(h, W, t, w, softcap=softcap, chunk_rows=6, stats=True)
        logits = reference(h, W, t, w, softcap=softcap)[2]
        count, entropy, correct = prediction_stats(logits.unsqueeze(0), t.unsqueeze(0), IGNORE)
        assert int(out.count) == int(count)
        close(out.entropy_sum, entropy)
        assert int(out.correct) == int(correct)
    # a problem where argmax is often right, so correct is not trivially 0
    t2 = (h @ W.T).argmax(1)
    t2[:5] = IGNORE
    out = fused_linear_weighted_ce(h, W, t2, w, stats=True)
    assert int(out.correct) == int((t2 != IGNORE).sum()) > 0


def test_no_grad_and_frozen_weight():
    h, W, _, t, w = problem()
    with torch.no_grad():
        out = fused_linear_weighted_ce(h, W, t, w, chunk_rows=9)
    close(out.loss, reference(h, W, t, w)[0])
    h1 = h.clone().requires_grad_()
    out = fused_linear_weighted_ce(h1, W, t, w, chunk_rows=9)  # head frozen: only the hidden-state gradient
    (gh,) = torch.autograd.grad(out.loss, [h1])
    h2 = h.clone().requires_grad_()
    close(gh, torch.autograd.grad(reference(h2, W, t, w)[0], [h2])[0])


def test_leading_dims_and_shapes():
    h, W, _, t, w = problem(n=36)
    out = fused_linear_weighted_ce(h.view(4, 9, -1), W, t.view(4, 9), w.view(4, 9), chunk_rows=5)
    assert out.ce.shape == (4, 9)
    close(out.loss, reference(h, W, t, w)[0])
