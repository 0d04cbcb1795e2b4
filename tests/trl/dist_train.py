"""ScaleSFTTrainer runs under torchrun (DDP over gloo) or DeepSpeed (CPU accelerator): the TRL harness of the
contract's two-process runs (tests/contract.py, ``run_distributed``).

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/trl/dist_train.py RUNS.json OUT_DIR [--deepspeed CFG]

``RUNS.json``: ``{name: {"options": {...}, "per_device": int, "grad_accum": int, "max_steps": int}}``. Writes, from
rank 0, ``OUT_DIR/results.json``: ``{name: {"rows": the training logs of each step, "eval": the eval metrics of
helpers.EVAL_KEYS on a held-out set split over the ranks, "params": whether OUT_DIR/<name>.safetensors holds the
final parameters}}`` (not under ZeRO-3, where the parameters are partitioned).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # contract.py; appended, so that tests/trl never shadows the trl package

import helpers  # noqa: E402
from contract import SAMPLES, step_recorder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs")
    parser.add_argument("out_dir")
    parser.add_argument("--deepspeed", default=None)
    args = parser.parse_args()
    if args.deepspeed:
        import deepspeed
        import deepspeed.ops

        # CPU test plumbing: skip DeepSpeed's JIT-compiled shared-memory comm op (minutes of gcc, a build cache
        # shared across environments); gloo does the collectives.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")  # before the model exists (ZeRO-3)
    import torch
    from safetensors.torch import save_file

    from scale_plugins.core import PREFIX
    from scale_plugins.testing import bpe_tokenizer
    from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

    zero3 = bool(args.deepspeed) and json.loads(Path(args.deepspeed).read_text())["zero_optimization"]["stage"] == 3
    rank0 = int(os.environ.get("RANK", "0")) == 0
    out = Path(args.out_dir)
    tokenizer = bpe_tokenizer()
    results = {}
    for name, run in json.loads(Path(args.runs).read_text()).items():
        config = helpers.config(
            ScaleSFTConfig,
            out / name,
            per_device_train_batch_size=run["per_device"],
            gradient_accumulation_steps=run["grad_accum"],
            max_steps=run["max_steps"],
            deepspeed=args.deepspeed,
            ddp_backend="gloo",
            per_device_eval_batch_size=2,
            **{PREFIX + key: value for key, value in run["options"].items()},
        )
        trainer = ScaleSFTTrainer(
            model=helpers.model(tokenizer),
            args=config,
            train_dataset=helpers.dataset(SAMPLES),  # the contract's data (prompt-completion)
            eval_dataset=helpers.dataset(8, seed=7),  # as the contract's single-process runs get it
            processing_class=tokenizer,
        )
        recorder = step_recorder()
        trainer.add_callback(recorder)
        trainer.train()
        # the eval set split over the ranks: metrics over the whole set, not world_size x them
        evaluated = trainer.evaluate()
        results[name] = {
            "rows": recorder.rows,
            "eval": {key: value for key, value in evaluated.items() if key in helpers.EVAL_KEYS},
            "params": not zero3,
        }
        if rank0 and not zero3:
            params = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}
            save_file(params, str(out / f"{name}.safetensors"))
        del trainer
    if rank0:
        (out / "results.json").write_text(json.dumps(results))
    if torch.distributed.is_initialized():
        # every rank is done before any exits; then tear gloo down explicitly: exiting with the process group alive
        # can abort a rank in its destructor ("terminate called without an active exception", SIGABRT)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    # The results are written and every rank is past the barrier: leave without running interpreter teardown, where
    # gloo / DeepSpeed threads still alive in destructors can abort a finished rank (seen once in ten ZeRO-3 runs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
