"""The SCALe contract (tests/contract.py) through LLaMA-Factory's own training entry (``run_exp``, patched), in this
process, against LLaMA-Factory's stock SFT (``use_scale_loss`` off). Packing is LLaMA-Factory's ``neat_packing``
(samples keep their own attention and position ids inside a packed row)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from ..contract import SAMPLES, Run, RunResult, ScaleContract, step_recorder
from .helpers import train_config, train_in_process

pytestmark = pytest.mark.slow


class TestLlamaFactoryContract(ScaleContract):
    refused = ({"label_smoothing_factor": 0.1}, "label_smoothing_factor")

    @pytest.fixture(scope="class", autouse=True)
    def _setup(self, tiny, patched):  # autouse: set up before the class-scoped contract_runs
        type(self).tiny = tiny

    def config(self, run: Run, output_dir: Path, host_config: dict[str, Any] | None = None) -> dict[str, Any]:
        overrides: dict[str, Any] = dict(
            max_samples=SAMPLES,
            per_device_train_batch_size=run.per_device,
            gradient_accumulation_steps=run.grad_accum,
            max_steps=run.max_steps,
            use_scale_loss=True if run.scale else None,
            **{f"scale_{key}": value for key, value in run.options.items()},
            **(host_config or {}),
        )
        if run.packing:  # every sample in one row
            overrides.update(packing=True, neat_packing=True, cutoff_len=2048)
        if run.save_steps:
            overrides.update(save_strategy="steps", save_steps=run.save_steps)
        return train_config(self.tiny, output_dir, **overrides)

    def run(self, run: Run, output_dir: Path, resume_from: Path | None) -> RunResult:
        from safetensors.torch import load_file

        config = self.config(run, output_dir)
        if resume_from:
            config["resume_from_checkpoint"] = str(resume_from)
        recorder, rows = step_recorder(), _Rows()
        # run_exp's clean-ups call gc.collect(), each a walk over every object of this test process (most of a tiny
        # run's time): keep what exists before the run out of the collector while it trains
        gc.freeze()
        try:
            train_in_process(config, [recorder, rows])
        finally:
            gc.unfreeze()
        assert rows.rows == (1 if run.packing else SAMPLES), rows.rows
        return RunResult(recorder.rows, load_file(output_dir / "model.safetensors"))

    def start(self, host_config: dict[str, Any], workdir: Path) -> None:
        from llamafactory.train.tuner import get_train_args  # patched: SCALe's checks included

        get_train_args(self.config(Run(), workdir, host_config))


class _Rows(TrainerCallback):
    """The number of training rows (packed rows when packing)."""

    rows = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.rows = len(kwargs["train_dataloader"].dataset)
