"""The LLaMA-Factory recipes (``recipes/llamafactory/``) through LLaMA-Factory's own argument parsing, as patched by
``scale-llamafactory``, with the model and dataset swapped for tiny local ones.

- every recipe goes through ``get_train_args`` (LLaMA-Factory's HfArgumentParser over its argument classes, with
  ``FinetuningArguments`` swapped for ours, then LLaMA-Factory's checks and ours) and through the launcher's
  ``preflight``: stage sft, full fine-tuning of the LLM and projector with the vision tower frozen, SCALe on with
  exactly the recipe's options;
- the template is the one LLaMA-Factory 0.9.5 registers for the model (with that family's multimodal plugin), and
  encoding a chain-of-thought chat with it supervises the whole answer turn and nothing of the prompt, where SCALe
  finds the think block;
- the DeepSpeed config the recipe names exists with the ZeRO stage the header states. The key itself is removed before
  parsing: LLaMA-Factory refuses DeepSpeed outside a torchrun launch (``FORCE_TORCHRUN=1``), and starting one is not
  the point here (tests/llamafactory/test_cli.py runs that config under torchrun);
- the header's launch command and GPU count agree with the keys (global batch 64, as in the TRL recipes).

The recipes ask for bf16 on GPUs: they are parsed here with ``use_cpu: true`` added, as the TRL recipe tests do.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from scale_plugins.core import ANSWER, THINK, ScaleOptions, SegmentTagger

from .helpers import DATASET

ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = ROOT / "recipes" / "llamafactory"


@dataclass(frozen=True)
class Recipe:
    template: str
    mm_plugin: str  # class name of the template's multimodal plugin
    gpus: int
    zero_stage: int


RECIPES = {
    "qwen2_5_vl_3b_scale_sft": Recipe("qwen2_vl", "Qwen2VLPlugin", 4, 2),
    "llava_1_6_mistral_7b_scale_sft": Recipe("llava_next_mistral", "LlavaNextPlugin", 8, 3),
    "gemma3_4b_scale_sft": Recipe("gemma3", "Gemma3Plugin", 4, 2),
}
THINK_BLOCK, ANSWER_BLOCK = "<think>\n2 + 2 = 4.\n</think>", "\n<answer>yes</answer>"


def read_recipe(stem: str) -> dict[str, Any]:
    return yaml.safe_load((RECIPE_DIR / f"{stem}.yaml").read_text())


def local_config(recipe: dict[str, Any], tiny: Any, output_dir: Path) -> dict[str, Any]:
    """The recipe with the tiny model and dataset, without the DeepSpeed key, on CPU."""
    config = copy.deepcopy(recipe)
    del config["deepspeed"]
    config.update(
        model_name_or_path=str(tiny.model),
        dataset=DATASET,
        dataset_dir=str(tiny.dataset_dir),
        output_dir=str(output_dir),
        preprocessing_num_workers=1,
        dataloader_num_workers=0,
        report_to="none",
        use_cpu=True,
    )
    return config


def test_every_recipe_is_covered():
    real_model = "smollm2_135m_scale_sft"  # the CPU example on a real model: test_real_model.py
    assert {p.stem for p in RECIPE_DIR.glob("*.yaml")} == set(RECIPES) | {real_model}


@pytest.mark.parametrize("stem", list(RECIPES))
def test_header_launch_command_and_deepspeed_config(stem):
    expected = RECIPES[stem]
    text = (RECIPE_DIR / f"{stem}.yaml").read_text()
    header = text.split("\n\n", 1)[0]
    recipe = read_recipe(stem)
    assert f"FORCE_TORCHRUN=1 scale-llamafactory train recipes/llamafactory/{stem}.yaml" in header
    assert f"SCALe loss active on rank R of {expected.gpus}" in header and "estimate, not measured" in header
    assert f"recipes/trl/{stem}.yaml" in header  # the hyperparameters it shares
    assert recipe["deepspeed"] == f"recipes/deepspeed/zero{expected.zero_stage}.json"
    config = json.loads((ROOT / recipe["deepspeed"]).read_text())
    assert config["zero_optimization"]["stage"] == expected.zero_stage
    assert recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"] * expected.gpus == 64


@pytest.mark.parametrize("stem", list(RECIPES))
def test_recipe_parses_through_the_patched_parser(stem, tiny, patched, tmp_path):
    from llamafactory.train import tuner

    from scale_plugins.llamafactory.hparams import ScaleFinetuningArguments, preflight

    recipe = read_recipe(stem)
    config = local_config(recipe, tiny, tmp_path / "out")
    model_args, data_args, training_args, finetuning_args, _ = tuner.get_train_args(dict(config))

    assert isinstance(finetuning_args, ScaleFinetuningArguments)
    assert finetuning_args.stage == "sft" and finetuning_args.finetuning_type == "full"
    assert finetuning_args.use_scale_loss is True
    options = ScaleOptions(**{k.removeprefix("scale_"): v for k, v in recipe.items() if k.startswith("scale_")})
    assert options == ScaleOptions()  # the recipes write the defaults out
    assert finetuning_args.scale_options() == options
    assert preflight(dict(config)).scale_options() == options  # what scale-llamafactory checks before launching
    # the LLM and the projector train, the vision tower does not
    assert finetuning_args.freeze_vision_tower is True
    assert finetuning_args.freeze_multi_modal_projector is False and finetuning_args.freeze_language_model is False
    assert data_args.template == RECIPES[stem].template and data_args.cutoff_len == 4096
    assert training_args.bf16 is True and training_args.learning_rate == recipe["learning_rate"]
    assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0.03
    assert training_args.num_train_epochs == 2.0 and model_args.model_name_or_path == str(tiny.model)


@pytest.mark.parametrize("stem", list(RECIPES))
def test_recipe_template_supervises_the_answer_turn_where_scale_finds_think(stem, tiny, patched, tmp_path):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.template import TEMPLATES
    from llamafactory.model import load_tokenizer
    from llamafactory.train import tuner

    expected = RECIPES[stem]
    assert type(TEMPLATES[expected.template].mm_plugin).__name__ == expected.mm_plugin
    model_args, data_args, *_ = tuner.get_train_args(local_config(read_recipe(stem), tiny, tmp_path / "out"))
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)

    chat = [
        {"role": "user", "content": "Is 2 + 2 = 4?"},
        {"role": "assistant", "content": THINK_BLOCK + ANSWER_BLOCK},
    ]
    # what LLaMA-Factory's supervised preprocessing does (train_on_prompt: false): prompt ids -> -100
    pairs = template.encode_multiturn(tokenizer, chat)
    input_ids = torch.tensor([i for source, target in pairs for i in source + target])
    labels = torch.tensor([[label for source, target in pairs for label in [-100] * len(source) + target]])
    supervised = tokenizer.decode(input_ids[labels[0] != -100])
    assert "2 + 2 = 4?" in tokenizer.decode(input_ids) and "2 + 2 = 4?" not in supervised
    assert supervised.strip().startswith(THINK_BLOCK + ANSWER_BLOCK)
    assert tokenizer.eos_token in supervised  # the stop token is learned too
    # the closer counted with its block: the think text is the whole <think>...</think>
    options = ScaleOptions(think_close_segment="think")
    segments = SegmentTagger.from_tokenizer(tokenizer, options).tag(labels, shift=False).segment_ids[0]
    assert tokenizer.decode(input_ids[segments == THINK]) == THINK_BLOCK
    answer = tokenizer.decode(input_ids[segments == ANSWER])
    assert answer.strip().startswith("<answer>yes</answer>") and tokenizer.eos_token in answer
