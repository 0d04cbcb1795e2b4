"""``TrainingArguments`` keywords shared by the offline commands (demo, bench-paper). ``scale_plugins.testing``
re-exports :func:`cpu_training_args`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["cpu_training_args"]


def cpu_training_args(output_dir: str | Path, seed: int) -> dict[str, Any]:
    """``TrainingArguments`` keywords of an offline CPU run (demo, bench-paper): float32, no checkpointing, nothing
    saved or reported, seeded, data loaded in the main process."""
    return dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
