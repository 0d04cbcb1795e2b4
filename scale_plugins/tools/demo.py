"""The README's main job: SCALe on a tiny model and the bundled synthetic CoT data, offline, on CPU.

Goes through the TRL adapter (``ScaleSFTTrainer``) exactly as a user would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core import ScaleOptions

logger = logging.getLogger("scale_plugins")


def plot_history(log_history: list[dict], path: Path, segment_names: tuple[str, ...]) -> bool:
    """Loss, segment losses and weights over training, from a Trainer's ``state.log_history``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written")
        return False
    rows = [r for r in log_history if "loss" in r and "step" in r]
    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(steps, [r["loss"] for r in rows], label="SCALe loss", color="black")
    for name in segment_names:
        key = f"scale/{name}_loss"
        if any(key in r for r in rows):
            left.plot(steps, [r.get(key, float("nan")) for r in rows], label=f"{name} loss")
        key = f"scale/{name}_weight"
        if any(key in r for r in rows):
            right.plot(steps, [r.get(key, float("nan")) for r in rows], label=f"{name} weight")
    left.set_xlabel("step")
    left.set_title("losses")
    left.legend()
    right.set_xlabel("step")
    right.set_title("segment weights")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def run_demo(
    output_dir: str = "scale_demo",
    max_steps: int = 200,
    batch_size: int = 8,
    options: ScaleOptions | None = None,
    seed: int = 0,
    hidden_size: int = 128,
    learning_rate: float = 3e-3,
) -> dict:
    import datasets
    import transformers

    from ..data import load_bundled
    from ..hf.args import cpu_training_args
    from ..hf.offline_tokenizers import bpe_tokenizer
    from ..hf.tiny_model import tiny_causal_lm
    from ..trl import ScaleSFTConfig, ScaleSFTTrainer

    options = options or ScaleOptions()
    transformers.set_seed(seed)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_warning()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = bpe_tokenizer()
    model = tiny_causal_lm(tokenizer, hidden_size=hidden_size, num_layers=2, seed=seed)
    dataset = datasets.Dataset.from_list([{"messages": s["messages"]} for s in load_bundled()])
    config = ScaleSFTConfig(
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        logging_steps=max(1, max_steps // 12),
        max_length=256,
        assistant_only_loss=True,  # supervise the assistant turn only, as CoT SFT does
        **cpu_training_args(out, seed),
        **options.to_dict(prefix="scale_"),
    )
    print(
        f"SCALe demo: tiny Qwen2-style model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), "
        f"{len(dataset)} synthetic CoT samples, {max_steps} steps on CPU; options: {options}"
    )
    trainer = ScaleSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    history = trainer.state.log_history
    (out / "log_history.json").write_text(json.dumps(history, indent=1))
    last = [r for r in history if "scale/answer_loss" in r][-1]
    summary = {k: v for k, v in last.items() if k.startswith("scale/") or k in ("loss", "step")}
    plot = out / "scale_demo.png"
    if plot_history(history, plot, options.segment_names):
        print(f"loss/weight plot: {plot}")
    print("final logged values: " + json.dumps({k: round(v, 4) for k, v in summary.items()}))
    return summary
