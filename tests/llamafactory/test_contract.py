"""The SCALe contract (tests/contract.py) through LLaMA-Factory's own training entry (``run_exp``, patched), in this
process, against LLaMA-Factory's stock SFT (``use_scale_loss`` off). Packing is LLaMA-Factory's ``neat_packing``
(samples keep their own attention and position ids inside a packed row)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from ..contract import (
    DISTRIBUTED,
    SAMPLES,
    Run,
    RunResult,
    ScaleContract,
    deepspeed_config,
    nodes,
    run_nodes,
    step_recorder,
)
from .helpers import CLI, run_cli, step_logs, train_config, train_in_process, write_yaml

pytestmark = pytest.mark.slow


class TestLlamaFactoryContract(ScaleContract):
    refused = ({"label_smoothing_factor": 0.1}, "label_smoothing_factor")
    distributed_modes = DISTRIBUTED

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

    def run_distributed(self, runs: dict[str, Run], mode: str, workdir: Path) -> dict[str, RunResult]:
        """``scale-llamafactory train`` with ``FORCE_TORCHRUN=1 NPROC_PER_NODE=2`` (LLaMA-Factory re-executes itself
        under torchrun), the shipped DeepSpeed config as ``deepspeed``; one launch per run. Two nodes: the same command
        twice, with ``NNODES=2 NODE_RANK=0/1 NPROC_PER_NODE=1 MASTER_ADDR MASTER_PORT``, as LLaMA-Factory documents."""
        from safetensors.torch import load_file

        ds = deepspeed_config(mode)
        results = {}
        for name, run in runs.items():
            out = workdir / name
            config = write_yaml(workdir / f"{name}.yaml", self.config(run, out, {"deepspeed": str(ds)} if ds else None))
            env = {"FORCE_TORCHRUN": "1", "OMP_NUM_THREADS": "1", **({"DS_ACCELERATOR": "cpu"} if ds else {})}
            if nodes(mode) > 1:
                # as on a cluster (docs/llamafactory.md, Multi-node): the same command on each node, told its rank
                output = "\n".join(run_nodes(_node_launch(config, env), workdir, 600))
            else:
                result = run_cli("train", str(config), env={**env, "NPROC_PER_NODE": "2"}, timeout=600)
                output = result.stdout + result.stderr
                assert result.returncode == 0, output[-3000:]
            for rank in (0, 1):
                assert f"SCALe loss active on rank {rank} of 2 (ScaleSeq2SeqTrainer)" in output
            # the loss came from SCALe's fused head, never from the [B, T, V] logits: the fallback is neither logged
            # nor counted (`scale/logits_path`)
            assert "logits_path" not in output, output[-3000:]
            rows = step_logs(out)
            assert not any("scale/logits_path" in row for row in rows), rows
            results[name] = RunResult(rows, load_file(out / "model.safetensors"))
        return results

    def start(self, host_config: dict[str, Any], workdir: Path) -> None:
        from llamafactory.train.tuner import get_train_args  # patched: SCALe's checks included

        get_train_args(self.config(Run(), workdir, host_config))


def _node_launch(config: Path, env: dict[str, str]) -> Callable[[int, int], tuple[list[str], dict[str, str]]]:
    """Node ``rank``'s ``scale-llamafactory train config``: LLaMA-Factory's multi-node variables, one process per node."""

    def launch(rank: int, port: int) -> tuple[list[str], dict[str, str]]:
        nodes_env = {"NNODES": "2", "NODE_RANK": str(rank), "NPROC_PER_NODE": "1"}
        nodes_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        return [CLI, "train", str(config)], {**os.environ, "LLAMAFACTORY_VERBOSITY": "INFO", **env, **nodes_env}

    return launch


class _Rows(TrainerCallback):
    """The number of training rows (packed rows when packing)."""

    rows = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.rows = len(kwargs["train_dataloader"].dataset)
