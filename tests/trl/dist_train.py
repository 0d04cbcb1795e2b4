"""One optimizer step of ScaleSFTTrainer under torchrun (DDP over gloo) or DeepSpeed (CPU accelerator).

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/trl/dist_train.py OUT.json [--deepspeed CFG]
Writes, from rank 0, the first step's logged loss and grad_norm for each normalization.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--deepspeed", default=None)
    parser.add_argument("--per-device", type=int, default=2)
    parser.add_argument("--ga", type=int, default=2)
    args = parser.parse_args()
    if args.deepspeed:
        import deepspeed
        import deepspeed.ops

        # CPU test plumbing: skip DeepSpeed's JIT-compiled shared-memory comm op (minutes of gcc, a build cache
        # shared across environments); gloo does the collectives.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")  # before the model exists (ZeRO-3)
    import torch

    from scale_plugins.testing import bpe_tokenizer
    from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

    tokenizer = bpe_tokenizer()
    results = {}
    for normalization in ("sample", "token"):
        config = helpers.config(
            ScaleSFTConfig,
            f"/tmp/scale_dist_{os.getpid()}_{normalization}",
            per_device_train_batch_size=args.per_device,
            gradient_accumulation_steps=args.ga,
            max_steps=1,
            scale_normalization=normalization,
            deepspeed=args.deepspeed,
            ddp_backend="gloo",
            per_device_eval_batch_size=2,
        )
        trainer = ScaleSFTTrainer(
            model=helpers.model(tokenizer), args=config, train_dataset=helpers.dataset(8), processing_class=tokenizer
        )
        trainer.train()
        row = next(r for r in trainer.state.log_history if "scale/answer_weight" in r)
        results[normalization] = {
            "loss": row["loss"],
            "grad_norm": float(row["grad_norm"]),
            "answer_loss": row["scale/answer_loss"],
            "think_loss": row["scale/think_loss"],
            # the eval set split over the ranks: metrics over the whole set, not world_size x them
            **{
                key: value
                for key, value in trainer.evaluate(helpers.dataset(8, seed=7)).items()
                if key in helpers.EVAL_KEYS
            },
        }
        del trainer
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "w") as f:
            json.dump(results, f)
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
