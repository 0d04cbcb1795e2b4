"""``scale-plugins trl-sft --config recipe.yaml``: ``trl sft`` with :class:`ScaleSFTTrainer`.

Same YAML and flags as ``trl sft`` (TrlParser: ScriptArguments, ScaleSFTConfig, ModelConfig,
DatasetMixtureConfig) plus the ``scale_*`` options. Multi-GPU:
``accelerate launch --config_file ... -m scale_plugins.trl --config recipe.yaml``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("scale_plugins")


def make_parser(prog: str = "scale-plugins trl-sft"):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

    from .config import ScaleSFTConfig

    return TrlParser((ScriptArguments, ScaleSFTConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


def train(script_args, training_args, model_args, dataset_args) -> None:
    import inspect

    from datasets import load_dataset
    from trl import SFTTrainer, get_dataset, get_peft_config, get_quantization_config

    from .trainer import ScaleSFTTrainer

    # trust_remote_code is an SFTConfig field from TRL 1.x on, a ModelConfig field before
    trust_remote_code = getattr(training_args, "trust_remote_code", None)
    if trust_remote_code is None:
        trust_remote_code = getattr(model_args, "trust_remote_code", False)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    trainer_kwargs = {}
    if (quantization := get_quantization_config(model_args)) is not None:
        if "quantization_config" in inspect.signature(SFTTrainer.__init__).parameters:  # TRL >= 1.x
            trainer_kwargs["quantization_config"] = quantization
        else:  # TRL 0.x (as `trl sft` of that version does)
            from trl import get_kbit_device_map

            model_init_kwargs.update(device_map=get_kbit_device_map(), quantization_config=quantization)
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:
        raise ValueError("Either `datasets` or `dataset_name` must be provided.")

    trainer = ScaleSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
        **trainer_kwargs,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"SCALe SFT done; model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        args=argv, fail_with_unknown_args=True
    )
    train(script_args, training_args, model_args, dataset_args)
    return 0
