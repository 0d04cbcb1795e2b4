"""The SCALe contract (tests/contract.py) through Axolotl's Python API (what ``axolotl train`` calls), against
Axolotl's stock trainer (the same config without ``loss: scale``). All the contract's runs go through one
subprocess (``run_axolotl.run_one`` in order: Axolotl's import is most of a tiny run's wall time). Packing is
Axolotl's ``sample_packing`` (multipack: samples keep their own position ids inside a packed row)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ..contract import SAMPLES, Run, RunResult, ScaleContract
from .conftest import PYTHON, axolotl_config, cot_samples, run_ok, scale_keys, write_jsonl

pytestmark = pytest.mark.slow

PACKED_LEN = 1024  # a packed row: room for all SAMPLES samples (each under the 128 tokens of the padded runs)
RUN_AXOLOTL = Path(__file__).with_name("run_axolotl.py")

# run_axolotl.run_one for each run (gc frozen first), keeping the logs of the steps each run trains (Trainer.log: after Axolotl's
# and SCALe's metrics are added) and where its model was saved.
DRIVER = """
import gc, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("run_axolotl", {run_axolotl!r})
run_axolotl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_axolotl)


def main():
    import transformers

    rows = []
    log = transformers.Trainer.log

    def record(self, logs, *args, **kwargs):
        if "loss" in logs and "train_loss" not in logs:
            rows.append({{**logs, "step": self.state.global_step}})
        return log(self, logs, *args, **kwargs)

    transformers.Trainer.log = record
    with open(sys.argv[1]) as f:
        runs = json.load(f)
    results = {{}}
    for name, config in runs.items():
        rows.clear()
        # Axolotl calls gc.collect() a dozen times a run (packing: 4 per batch-count estimate), each a walk over
        # every object of torch / transformers / Axolotl: most of a tiny run's time. Freeze what exists now (the
        # libraries, the earlier runs' leftovers) out of the collector: the runs themselves are unchanged.
        gc.freeze()
        result = run_axolotl.run_one(config)
        results[name] = {{"trainer": result["trainer"], "rows": list(rows)}}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":  # Axolotl's dataset workers may spawn and re-import this file
    main()
"""


class TestAxolotlContract(ScaleContract):
    # one of the keys that replace the loss SCALe computes; test_config.py checks the others
    refused = ({"flash_attn_cross_entropy": True}, "flash_attn_cross_entropy:")

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
        driver, spec, out = workdir / "driver.py", workdir / "runs.json", workdir / "results.json"
        driver.write_text(DRIVER.format(run_axolotl=str(RUN_AXOLOTL)))
        spec.write_text(json.dumps(configs))
        run_ok([PYTHON, str(driver), str(spec), str(out)], workdir, 900)
        results = {}
        for name, result in json.loads(out.read_text()).items():
            expected = "ScaleAxolotlTrainer" if runs[name].scale else "AxolotlTrainer"
            assert result["trainer"] == expected, (name, result["trainer"])
            if runs[name].packing:  # all samples in one packed row
                assert result["rows"][0]["tokens/total"] == PACKED_LEN, result["rows"][0]
            results[name] = RunResult(result["rows"], load_file(workdir / name / "model.safetensors"))
        return results

    def start(self, host_config: dict[str, Any], workdir: Path) -> None:
        from axolotl.utils.config import prepare_plugins, validate_config
        from axolotl.utils.dict import DictDefault

        cfg = DictDefault(self.config(Run(), workdir, host_config))
        prepare_plugins(cfg)
        validate_config(cfg)
