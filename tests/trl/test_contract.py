"""The SCALe contract (tests/contract.py) on ScaleSFTTrainer, against stock SFTTrainer, in this process.

Runs on every TRL the envs pin (1.16 here, 1.9 in the axolotl env, 0.24 in the llamafactory env)."""

from __future__ import annotations

import functools
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from trl import SFTConfig, SFTTrainer

from scale_plugins.core import PREFIX
from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from ..contract import (
    DISTRIBUTED,
    EQUAL,
    SAMPLES,
    Run,
    RunResult,
    ScaleContract,
    deepspeed_config,
    free_port,
    nodes,
    run_nodes,
    step_recorder,
    torchrun_node_args,
)
from . import helpers

pytestmark = pytest.mark.slow
DIST_TRAIN = Path(__file__).with_name("dist_train.py")


@functools.cache
def _tokenizer():
    from scale_plugins.testing import bpe_tokenizer

    return bpe_tokenizer()


class TestTRLContract(ScaleContract):
    refused = ({"label_smoothing_factor": 0.1}, "label_smoothing_factor")
    distributed_modes = DISTRIBUTED

    @property
    def tokenizer(self):
        return _tokenizer()

    def trainer(
        self, run: Run, output_dir: Path, host_config: dict[str, Any] | None = None, kind: str = "prompt-completion"
    ) -> SFTTrainer:
        kwargs: dict[str, Any] = dict(
            per_device_train_batch_size=run.per_device,
            gradient_accumulation_steps=run.grad_accum,
            max_steps=run.max_steps,
            **(host_config or {}),
        )
        if run.packing:
            kwargs.update(packing=True, max_length=4096)
        if run.save_steps:
            kwargs.update(save_strategy="steps", save_steps=run.save_steps)
        if run.scale:
            kwargs.update({PREFIX + key: value for key, value in run.options.items()})
        cls, config = (ScaleSFTTrainer, ScaleSFTConfig) if run.scale else (SFTTrainer, SFTConfig)
        return cls(
            model=helpers.model(self.tokenizer),
            args=helpers.config(config, output_dir, **kwargs),
            train_dataset=helpers.dataset(SAMPLES, kind=kind),
            # held out, given here: TRL 0.24 prepares (tokenizes) an eval set only at construction
            eval_dataset=helpers.dataset(8, seed=7),
            processing_class=self.tokenizer,
        )

    def run(self, run: Run, output_dir: Path, resume_from: Path | None, **trainer_kwargs: Any) -> RunResult:
        trainer = self.trainer(run, output_dir, **trainer_kwargs)
        if run.packing:  # all samples in one packed row
            batch = next(iter(trainer.get_train_dataloader()))
            assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"] == 0).sum()) == SAMPLES
        recorder = step_recorder()
        trainer.add_callback(recorder)
        # the trainer's clean-ups call gc.collect(), each a walk over every object of this test process (most of
        # a tiny run's time): keep what exists before the run out of the collector while it trains
        gc.freeze()
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            gc.unfreeze()
        params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        # held-out eval after training: the two-process runs must give the same metrics over the whole set
        evaluated = trainer.evaluate()
        return RunResult(
            recorder.rows, params, {"eval": {k: v for k, v in evaluated.items() if k in helpers.EVAL_KEYS}}
        )

    def start(self, host_config: dict[str, Any], workdir: Path) -> None:
        self.trainer(Run(), workdir, host_config)

    def run_distributed(self, runs: dict[str, Run], mode: str, workdir: Path) -> dict[str, RunResult]:
        from safetensors.torch import load_file

        spec = workdir / "runs.json"
        spec.write_text(
            json.dumps(
                {
                    name: {
                        "options": r.options,
                        "per_device": r.per_device,
                        "grad_accum": r.grad_accum,
                        "max_steps": r.max_steps,
                    }
                    for name, r in runs.items()
                }
            )
        )
        config = deepspeed_config(mode)
        script = [str(DIST_TRAIN), str(spec), str(workdir)] + (["--deepspeed", str(config)] if config else [])
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            # DeepSpeed JIT-builds its CPU comm op into TORCH_EXTENSIONS_DIR: one cache per virtualenv
            "TORCH_EXTENSIONS_DIR": str(Path(sys.prefix) / "torch_extensions"),
            **({"DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"} if config else {}),
        }
        if nodes(mode) > 1:
            # as on a cluster: one torchrun per node, `--nnodes 2 --node_rank N --master_addr ... --master_port ...`
            outputs = run_nodes(
                lambda rank, port: (torchrun + torchrun_node_args(rank, port) + script, env), DIST_TRAIN.parents[2], 900
            )
            output = "\n".join(outputs)
        else:
            cmd = torchrun + ["--nproc_per_node", "2", "--master_port", str(free_port())] + script
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=DIST_TRAIN.parents[2])
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, output[-6000:]
        # no rank fell back to the [B, T, V] logits: the fallback is logged with its counter's name
        assert "logits_path" not in output, output[-3000:]
        results = {}
        for name, result in json.loads((workdir / "results.json").read_text()).items():
            params = load_file(workdir / f"{name}.safetensors") if result["params"] else None
            results[name] = RunResult(result["rows"], params, {"eval": result["eval"]})
        return results

    # -- TRL specifics --------------------------------------------------------------------------------------

    def test_equal_weights_give_the_stock_loss_on_messages_with_assistant_only_loss(self, tmp_path):
        """The equal-weights contract on conversational data, supervised through TRL's assistant masks."""
        messages = dict(host_config={"assistant_only_loss": True}, kind="messages")
        stock = self.run(Run(scale=False, max_steps=1), tmp_path / "stock", None, **messages)
        equal = self.run(Run(options=EQUAL, max_steps=1), tmp_path / "equal", None, **messages)
        self.assert_stock_equivalent(equal, stock)

    def test_equal_weights_keep_trls_metrics(self, contract_runs):
        """TRL's entropy / token accuracy / token count come out as stock SFTTrainer logs them (TRL >= 1.x: its
        fused head; older: SCALe computes them from the logits)."""
        for ours, stock in zip(contract_runs["equal"].rows, contract_runs["stock"].rows, strict=True):
            for metric in ("entropy", "mean_token_accuracy", "num_tokens"):
                assert ours[metric] == pytest.approx(stock[metric], rel=1e-5), metric

    @pytest.mark.distributed
    def test_two_process_eval_metrics_cover_the_whole_set(self, contract_runs, two_process_runs):
        """The eval set split over 2 ranks (batch 2 each): SCALe's eval metrics are those of the whole set, as one
        process computes them (one batch of 8) after the same training (not world_size x them, not one rank's)."""
        _, runs = two_process_runs
        for normalization in ("sample", "token"):
            got, want = runs[f"{normalization}_2proc"].extra["eval"], contract_runs[f"{normalization}_b8"].extra["eval"]
            assert got.keys() == want.keys() == set(helpers.EVAL_KEYS)
            for key in helpers.EVAL_KEYS:
                assert got[key] == pytest.approx(want[key], rel=1e-5), (normalization, key)
