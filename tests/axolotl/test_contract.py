"""The SCALe contract (tests/contract.py) through Axolotl's Python API (what ``axolotl train`` calls), against
Axolotl's stock trainer (the same config without ``loss: scale``). All the contract's runs go through one
subprocess (``run_axolotl.py``, the runs in order: Axolotl's import is most of a tiny run's wall time); the
two-process runs through ``torchrun`` and the same script. Packing is
Axolotl's ``sample_packing`` (multipack: samples keep their own position ids inside a packed row)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ..contract import (
    DISTRIBUTED,
    SAMPLES,
    Run,
    RunResult,
    ScaleContract,
    deepspeed_config,
    nodes,
    run_nodes,
    torchrun_node_args,
)
from .conftest import PYTHON, axolotl_config, cot_samples, run_ok, scale_keys, subprocess_env, write_jsonl

pytestmark = pytest.mark.slow

PACKED_LEN = 1024  # a packed row: room for all SAMPLES samples (each under the 128 tokens of the padded runs)
RUN_AXOLOTL = Path(__file__).with_name("run_axolotl.py")


class TestAxolotlContract(ScaleContract):
    # one of the keys that replace the loss SCALe computes; test_config.py checks the others
    refused = ({"flash_attn_cross_entropy": True}, "flash_attn_cross_entropy:")
    distributed_modes = DISTRIBUTED

    @pytest.fixture(scope="class", autouse=True)
    def _setup(self, tiny_model_dir, tmp_path_factory):  # autouse: set up before the class-scoped contract_runs
        data = tmp_path_factory.mktemp("contract_data") / "cot.jsonl"
        type(self).model_dir, type(self).data = tiny_model_dir, write_jsonl(data, cot_samples(SAMPLES))

    def config(self, run: Run, output_dir: Path, host_config: dict[str, Any] | None = None) -> dict[str, Any]:
        overrides: dict[str, Any] = dict(
            output_dir=str(output_dir),
            # the same data and tokenizer: runs with the same dataset settings share the prepared dataset
            dataset_prepared_path=str(output_dir.parent / "prepared"),
            micro_batch_size=run.per_device,
            gradient_accumulation_steps=run.grad_accum,
            max_steps=run.max_steps,
            **(host_config or {}),
        )
        if run.packing:  # every sample in one packed row
            overrides.update(sample_packing=True, sequence_len=PACKED_LEN)
        if run.save_steps:
            overrides.update(save_strategy="steps", save_steps=run.save_steps)
        if run.scale:
            overrides.update(scale_keys(**run.options))
        return axolotl_config(self.model_dir, self.data, output_dir, **overrides)

    def run_all(self, runs: dict[str, Run], workdir: Path) -> dict[str, RunResult]:
        from safetensors.torch import load_file

        configs = {}
        for name, run in runs.items():
            configs[name] = self.config(run, workdir / name)
            if run.resume:
                configs[name]["resume_from_checkpoint"] = str(self.checkpoint(workdir / run.resume[0], run.resume[1]))
        spec, out = workdir / "runs.json", workdir / "results.json"
        spec.write_text(json.dumps(configs))
        run_ok([PYTHON, str(RUN_AXOLOTL), str(spec), str(out)], workdir, 900)
        results = {}
        for name, result in json.loads(out.read_text()).items():
            expected = "ScaleAxolotlTrainer" if runs[name].scale else "AxolotlTrainer"
            assert result["trainer"] == expected, (name, result["trainer"])
            if runs[name].packing:  # all samples in one packed row
                assert result["rows"][0]["tokens/total"] == PACKED_LEN, result["rows"][0]
            results[name] = RunResult(result["rows"], load_file(workdir / name / "model.safetensors"))
        return results

    def run_distributed(self, runs: dict[str, Run], mode: str, workdir: Path) -> dict[str, RunResult]:
        """``torchrun --nproc_per_node 2 run_axolotl.py --cpu-distributed`` (two nodes: one ``torchrun --nnodes 2
        --node_rank N --nproc_per_node 1`` each): the configs of :meth:`config` with the shipped DeepSpeed config as
        Axolotl's ``deepspeed`` key (plain DDP without one)."""
        from safetensors.torch import load_file

        ds = deepspeed_config(mode)
        env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
        env.update({"DS_ACCELERATOR": "cpu"} if ds else {"ACCELERATE_USE_CPU": "true"})
        torchrun = str(Path(PYTHON).with_name("torchrun"))
        results = {}
        for name, run in runs.items():
            # one launch per run: Axolotl's train() tears the process group down at its end
            config = self.config(run, workdir / name, {"deepspeed": json.loads(ds.read_text())} if ds else None)
            spec, out = workdir / f"{name}.json", workdir / f"{name}.results.json"
            spec.write_text(json.dumps({name: config}))
            script = [str(RUN_AXOLOTL), str(spec), str(out), "--cpu-distributed"]
            if nodes(mode) > 1:
                # as on a cluster: one torchrun per node (docs/axolotl.md, Multi-node)
                outputs = run_nodes(
                    lambda rank, port, script=script: ([torchrun, *torchrun_node_args(rank, port), *script], env),
                    workdir,
                    900,
                )
                output = "\n".join(outputs)
            else:
                output = run_ok([torchrun, "--nproc_per_node", "2", *script], workdir, 900, env=env)
            # the loss came from SCALe's fused head, never from the [B, T, V] logits: the fallback is neither logged
            # nor counted (`scale/logits_path`)
            assert "logits_path" not in output, output[-3000:]
            result = json.loads(out.read_text())[name]
            assert result["trainer"] == "ScaleAxolotlTrainer" and result["num_processes"] == 2, name
            assert result["distributed_type"] == ("DistributedType.DEEPSPEED" if ds else "DistributedType.MULTI_CPU")
            assert not any("scale/logits_path" in row for row in result["rows"]), name
            results[name] = RunResult(result["rows"], load_file(workdir / name / "model.safetensors"))
        return results

    def start(self, host_config: dict[str, Any], workdir: Path) -> None:
        from axolotl.utils.config import prepare_plugins, validate_config
        from axolotl.utils.dict import DictDefault

        cfg = DictDefault(self.config(Run(), workdir, host_config))
        prepare_plugins(cfg)
        validate_config(cfg)
