"""What both bench-paper modes share (:mod:`scale_plugins.paper_bench`, :mod:`.pretrained`): held-out segment CE and
the plotting backend."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("scale_plugins")


def segment_ce(model: Any, tokenizer: Any, samples: list[dict[str, Any]], batch_size: int = 64) -> dict[str, float]:
    """Teacher-forced cross-entropy of the gold completions, pooled over the think and the answer tokens.

    The segments are the ones SCALe trains on (the core's tagger, default tags): think = ``<think>`` through
    ``</think>``; answer = the rest of the assistant turn (``<answer>`` tags, the number, end of turn).
    """
    import torch

    from ...core import ScaleOptions, SegmentTagger
    from ..inspect import encode_sample

    tagger = SegmentTagger.from_tokenizer(tokenizer, ScaleOptions())
    totals = torch.zeros(3, dtype=torch.float64)
    counts = torch.zeros(3, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            encoded = [
                through_eos(*encode_sample(tokenizer, s), tokenizer.eos_token_id) for s in samples[i : i + batch_size]
            ]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in encoded])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in encoded])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in encoded])
            segments = tagger.tag(labels, shift=True).segment_ids
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
            ce = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
            ).double()
            for seg in (1, 2):
                chosen = segments == seg
                totals[seg] += ce[chosen].sum()
                counts[seg] += chosen.sum()
    return {
        "think_ce": float(totals[1] / counts[1]) if counts[1] else float("nan"),
        "answer_ce": float(totals[2] / counts[2]) if counts[2] else float("nan"),
    }


def through_eos(ids: list[int], labels: list[int], eos: int) -> tuple[list[int], list[int]]:
    """Cut after the last end-of-turn token: the template's newline after it is not trained (assistant-only loss)."""
    end = max((i for i, t in enumerate(ids) if t == eos), default=len(ids) - 1) + 1
    return ids[:end], labels[:end]


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots written")
        return None
    return plt
