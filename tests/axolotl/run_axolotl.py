"""Run several Axolotl trainings in one process through Axolotl's Python API (what ``axolotl train`` calls).

    python run_axolotl.py runs.json results.json [--dump-train-data]
    torchrun --nproc_per_node 2 run_axolotl.py runs.json results.json --cpu-distributed

``runs.json``: ``{name: axolotl config dict}``, run in order. ``results.json`` (written by rank 0):
``{name: {"trainer": class name, "num_processes", "distributed_type", "log_history": trainer.state.log_history,
"rows": the training logs of the steps this run trained (as ``Trainer.log`` received them: Axolotl's and SCALe's
metrics included), "trainer_mro", "scale_options" (repr), "eos_token", "trainable": names of the trainable
parameters, "trainable_numel", "total_numel"; with ``--dump-train-data`` also "train_data": the ``input_ids`` and
``labels`` of every row the trainer trains on}}`` with the
exact (unrounded) logged floats. One process for several short runs saves Axolotl's import time (most of a tiny
run's wall time on CPU); what exists before each run is frozen out of the garbage collector (Axolotl calls
``gc.collect()`` a dozen times a run, each a walk over every object of torch / transformers / Axolotl).

``--cpu-distributed``: test plumbing so that a multi-process DeepSpeed run works on a machine without GPUs.
None of it is needed (or wanted) on GPUs:
- Axolotl pins ``device_map`` to ``{"": LOCAL_RANK}`` in multi-process runs, i.e. a GPU index, and
  transformers then asks for an accelerator that does not exist: load on the CPU instead;
- accelerate picks no process-group backend when there is no accelerator, so it treats the run as a single
  process (every rank reads the whole data, ``num_processes == 1``): default the backend to gloo; and for plain DDP
  (``ACCELERATE_USE_CPU=true``, no DeepSpeed) tell the PartialState it runs on the CPU, so that the ranks train as
  one (``MULTI_CPU``; without it each rank trains alone);
- DeepSpeed's CPU shared-memory collectives are compiled with ninja on first use, which takes minutes on
  a small machine and leaves a lock behind when interrupted: use plain gloo collectives.
"""

from __future__ import annotations

import gc
import json
import os
import sys

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_distributed_plumbing() -> None:
    import accelerate.state
    import axolotl.cli.config
    import deepspeed.ops

    normalize_config = axolotl.cli.config.normalize_config

    def normalize_config_on_cpu(cfg):
        normalize_config(cfg)
        cfg.device_map = None

    axolotl.cli.config.normalize_config = normalize_config_on_cpu

    partial_state_init = accelerate.state.PartialState.__init__

    def partial_state_init_gloo(self, cpu=False, **kwargs):
        if kwargs.get("backend") is None:
            kwargs["backend"] = "gloo"
        # plain DDP (no DeepSpeed): accelerate sets up multi-process CPU training (MULTI_CPU) only when told it runs
        # on the CPU; otherwise every rank trains alone (DistributedType.NO). AcceleratorState reads this variable,
        # but Axolotl creates the PartialState first.
        cpu = cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        partial_state_init(self, cpu=cpu, **kwargs)

    accelerate.state.PartialState.__init__ = partial_state_init_gloo
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def run_one(config: dict) -> dict:
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import train
    from axolotl.utils.dict import DictDefault

    _ROWS.clear()
    gc.freeze()  # the libraries and the earlier runs' leftovers: out of the collector's walks (the run is unchanged)
    cfg = load_cfg(DictDefault(config))
    dataset_meta = load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    _, _, trainer = train(cfg=cfg, dataset_meta=dataset_meta)
    params = list(trainer.model.named_parameters())
    details = {}
    if _DUMP_TRAIN_DATA:
        data = trainer.train_dataset
        details["train_data"] = {key: [list(row) for row in data[key]] for key in ("input_ids", "labels")}
    return {
        **details,
        "trainer": type(trainer).__name__,
        "trainer_mro": [cls.__name__ for cls in type(trainer).__mro__],
        "scale_options": repr(getattr(trainer, "scale_options", None)),
        "eos_token": trainer.processing_class.eos_token,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "log_history": trainer.state.log_history,
        "rows": list(_ROWS),
        "trainable": [n for n, p in params if p.requires_grad],
        "trainable_numel": sum(p.numel() for _, p in params if p.requires_grad),
        "total_numel": sum(p.numel() for _, p in params),
    }


_ROWS: list[dict] = []
_DUMP_TRAIN_DATA = False


def record_step_logs() -> None:
    """Keep each training step's log as ``Trainer.log`` receives it (after Axolotl and SCALe added their metrics)."""
    import transformers

    log = transformers.Trainer.log

    def record(self, logs, *args, **kwargs):
        if "loss" in logs and "train_loss" not in logs:
            _ROWS.append({**logs, "step": self.state.global_step})
        return log(self, logs, *args, **kwargs)

    transformers.Trainer.log = record


def main(spec_path: str, out_path: str, *flags: str) -> None:
    global _DUMP_TRAIN_DATA
    if "--cpu-distributed" in flags:
        cpu_distributed_plumbing()
    _DUMP_TRAIN_DATA = "--dump-train-data" in flags
    record_step_logs()
    with open(spec_path) as f:
        runs = json.load(f)
    results = {name: run_one(config) for name, config in runs.items()}
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # all ranks done, then tear the process group down explicitly: exiting with it alive can abort a rank in its
        # destructor ("terminate called without an active exception", SIGABRT)
        dist.barrier()
        dist.destroy_process_group()
    # results written, every rank past the barrier: leave without interpreter teardown, where gloo / DeepSpeed
    # threads still alive in destructors can abort a finished rank (seen once in ten ZeRO-3 runs)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
