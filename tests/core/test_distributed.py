"""2 ranks x 2 micro-batches x 2 samples over gloo == one batch of 8, for both normalizations, with the closer in
think or in a segment of its own."""

from __future__ import annotations

import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scale_plugins.core import (
    ScaleOptions,
    StepCounts,
    scale_loss_from_logits,
    segment_weights,
    shift_targets,
    token_weights,
)

from .toy import ContextFreeLM, make_sample, pad_batch, tagger_for

pytestmark = pytest.mark.distributed


def _samples():
    rng = random.Random(11)
    out = [make_sample(rng) for _ in range(6)]
    out.append(make_sample(rng, think=False))  # a rank whose second micro-batch has an answer-only sample
    out.append(make_sample(rng, answer=False))
    return out


def _step_loss(model, micro_batches, options, world):
    tagger = tagger_for(options)
    segs = [tagger.tag(lab) for _, lab in micro_batches]
    acc = StepCounts(len(options.segment_names))
    for s in segs:
        acc.add(s)
    counts = acc.all_reduce()  # every rank joins, whatever it holds
    ws = segment_weights(4, 10, options)
    loss = 0.0
    for (ids, lab), s in zip(micro_batches, segs):
        loss = (
            loss
            + scale_loss_from_logits(
                model(ids), shift_targets(lab), token_weights(s, ws, counts, options.normalization)
            )[0]
        )
    return loss * world  # DDP averages gradients over ranks


def _options(normalization: str, closer: str) -> ScaleOptions:
    return ScaleOptions(normalization=normalization, think_close_segment=closer)


def _worker(rank, world, port, normalization, closer, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        options = _options(normalization, closer)
        model = ContextFreeLM()
        mine = _samples()[rank * 4 : (rank + 1) * 4]
        micro = [pad_batch(mine[i : i + 2]) for i in (0, 2)]
        loss = _step_loss(model, micro, options, world)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for g in grads:
            dist.all_reduce(g)
            g /= world
        if rank == 0:
            torch.save([g.clone() for g in grads], os.path.join(out_dir, "grads.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # results written, every rank past the barrier: skip interpreter teardown, where a gloo thread still alive in a
    # destructor can abort a finished rank ("terminate called without an active exception")
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("closer", ["think", "own"])
@pytest.mark.parametrize("normalization", ["sample", "token"])
def test_two_ranks_match_one_batch(tmp_path, normalization, closer):
    options = _options(normalization, closer)
    model = ContextFreeLM()
    full = torch.autograd.grad(_step_loss(model, [pad_batch(_samples())], options, 1), list(model.parameters()))
    mp.spawn(_worker, args=(2, _free_port(), normalization, closer, str(tmp_path)), nprocs=2, join=True)
    ranks = torch.load(tmp_path / "grads.pt")
    for a, b in zip(full, ranks):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
