"""Toy data for core tests: a tiny vocabulary whose pieces are plain bytes, and a context-free 'model'
(logits depend only on the current token), so packing and padding cannot change the per-token CE."""

from __future__ import annotations

import random

import torch

from scale_plugins.core import ScaleOptions, SegmentTagger, TokenTable

PIECES = [b"<pad>", b"<think>", b"</think>", b"<answer>", b"</answer>", b"<eos>", b"<user>"] + [
    bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz0123456789 "
]
PAD, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, EOS, USER = range(7)
WORDS = list(range(7, len(PIECES)))
VOCAB = len(PIECES)


def make_sample(rng: random.Random, think: bool = True, answer: bool = True) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one sample: a masked prompt, then a supervised response."""
    prompt = [USER] + [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
    response: list[int] = []
    if think:
        response += [THINK_OPEN] + [rng.choice(WORDS) for _ in range(rng.randint(5, 40))] + [THINK_CLOSE]
    if answer:
        response += [ANSWER_OPEN] + [rng.choice(WORDS) for _ in range(rng.randint(1, 4))] + [ANSWER_CLOSE, EOS]
    ids = prompt + response
    return ids, [-100] * len(prompt) + response


def pad_batch(samples: list[tuple[list[int], list[int]]], extra_pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s[0]) for s in samples) + extra_pad
    ids = torch.full((len(samples), width), PAD)
    labels = torch.full((len(samples), width), -100)
    for row, (i, lab) in enumerate(samples):
        ids[row, : len(i)] = torch.tensor(i)
        labels[row, : len(lab)] = torch.tensor(lab)
    return ids, labels


def pack(samples: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([t for s in samples for t in s[0]]).unsqueeze(0)
    labels = torch.tensor([t for s in samples for t in s[1]]).unsqueeze(0)
    # Packing collators mask the first label of each sample so nothing is predicted across the boundary.
    position_ids = torch.cat([torch.arange(len(s[0])) for s in samples]).unsqueeze(0)
    labels = labels.masked_fill(position_ids == 0, -100)
    return ids, labels, position_ids


class ContextFreeLM(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, 16, generator=g))
        self.head = torch.nn.Parameter(torch.randn(16, VOCAB, generator=g) * 0.5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed[input_ids]) @ self.head


def tagger_for(options: ScaleOptions) -> SegmentTagger:
    return SegmentTagger(TokenTable(PIECES), options)
