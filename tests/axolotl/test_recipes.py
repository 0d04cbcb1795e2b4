"""The Axolotl recipes (``recipes/axolotl/``) through Axolotl's own config loading, on tiny local models.

- every recipe passes Axolotl's schema validation as ``axolotl train`` runs it on the GPUs its header names (GPU
  capabilities given, the DeepSpeed config kept);
- every SCALe-SFT recipe loads with ``load_cfg`` on a tiny random model of its own architecture (Qwen2.5-VL,
  LLaVA-NeXT with a Mistral text model, Gemma 3): Axolotl sees a multimodal model of that type, and the plugin builds
  the SCALe trainer with exactly the recipe's ``scale_*`` options;
- ``unfrozen_parameters`` trains the LLM and the projector, never the vision tower (Axolotl's own freeze function on
  the tiny models, whose parameter names are those of the real checkpoints once loaded by transformers);
- LLaVA-NeXT: the recipe's chat format and turn markers make Axolotl's multimodal collator supervise the assistant
  turns only, and SCALe finds think and answer there; Axolotl 0.19.0 itself crashes on turn markers read from a
  config file unless ``ScalePlugin.pre_model_load`` passes them on as plain dicts (a strict xfail, so we learn when
  Axolotl fixes it), and ``axolotl train`` on the recipe supervises exactly the assistant turns;
- GRPO: the recipe loads, hands TRL our reward functions and its settings, and (slow) the documented
  ``axolotl train ... --no-trl.use-vllm`` runs 2 steps on CPU with both rewards logged and right.

``load_cfg`` runs with the DeepSpeed key removed (it would start DeepSpeed's process group) and ``tf32: false`` (it
would change torch's float32 matmul precision for the whole test process); the environment variables it sets are
restored after each test.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from scale_plugins.core import ANSWER, THINK, ScaleOptions

from .conftest import PLUGIN, PYTHON, run_ok, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = ROOT / "recipes" / "axolotl"
GRPO_RECIPE = RECIPE_DIR / "grpo_from_scale_sft.yaml"
AXOLOTL = str(Path(PYTHON).with_name("axolotl"))


@dataclass(frozen=True)
class SftRecipe:
    model_type: str  # Axolotl's cfg.model_config_type for the recipe's base model
    gpus: int  # what the header's launch command asks for
    zero_stage: int
    vision_tower: str  # parameter-name prefix of the vision encoder (frozen)
    projector: str  # parameter-name prefix of the projector (trained)


SFT_RECIPES = {
    "qwen2_5_vl_3b_scale_sft": SftRecipe("qwen2_5_vl", 4, 2, "model.visual.", "model.visual.merger."),
    "llava_1_6_mistral_7b_scale_sft": SftRecipe(
        "llava_next", 8, 3, "model.vision_tower.", "model.multi_modal_projector."
    ),
    "gemma3_4b_scale_sft": SftRecipe("gemma3", 4, 2, "model.vision_tower.", "model.multi_modal_projector."),
}
GRPO_GPUS, GRPO_ZERO_STAGE = 4, 2


def recipe_path(stem: str) -> Path:
    return RECIPE_DIR / f"{stem}.yaml"


def read_recipe(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def recipe_scale_options(recipe: dict[str, Any]) -> ScaleOptions:
    return ScaleOptions(
        **{key.removeprefix("scale_"): value for key, value in recipe.items() if key.startswith("scale_")}
    )


@pytest.fixture(autouse=True)
def fresh_plugin_manager():
    """Axolotl's PluginManager is a process-wide singleton: start every test with no plugin registered."""
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    yield
    manager.plugins.clear()
    manager.plugins.update(saved)


@pytest.fixture
def restore_environ():
    """``load_cfg`` exports ACCELERATE_* variables (bf16 mixed precision for these recipes): keep them in this test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# -- tiny models of the recipes' architectures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model_type -> directory of a tiny random model (LLaVA-NeXT and Gemma 3 with their processors and tokenizers)."""
    from transformers import AutoModelForImageTextToText

    from scale_plugins.testing import tiny_gemma3, tiny_llava_next, tiny_vlm_config

    root = tmp_path_factory.mktemp("tiny_vlms")
    dirs = {}
    for model_type in ("qwen2_5_vl", "llava_next", "gemma3"):
        path = root / model_type
        if model_type == "qwen2_5_vl":  # its processor needs torchvision: the model alone
            model = AutoModelForImageTextToText.from_config(tiny_vlm_config(model_type))
        else:
            build = {"llava_next": tiny_llava_next, "gemma3": tiny_gemma3}[model_type]
            model, processor = build(root / f"{model_type}_tokenizer")
            processor.save_pretrained(path)
        model.save_pretrained(path)
        dirs[model_type] = path
    return dirs


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Is 2 + 2 = 4?"}]},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "<think>\n2 + 2 = 4.\n</think>\n<answer>yes</answer>"}],
            },
        ]
    }
    return write_jsonl(tmp_path_factory.mktemp("sft_data") / "cot.jsonl", [row])


def loadable(recipe: dict[str, Any], base_model: Path, data: Path, workdir: Path) -> dict[str, Any]:
    """The recipe with its placeholders swapped for local files, ready for ``load_cfg`` in this process."""
    cfg = copy.deepcopy(recipe)
    cfg.pop("deepspeed")  # load_cfg would start DeepSpeed's process group (checked in test_recipe_validates_...)
    cfg.update(base_model=str(base_model), output_dir=str(workdir / "out"), tf32=False)
    (dataset,) = cfg["datasets"]
    dataset["path"] = str(data)
    return cfg


def load(cfg: dict[str, Any]) -> Any:
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    return load_cfg(DictDefault(cfg))


def train_two_cpu_steps(
    config: dict[str, Any], workdir: Path, micro_batch_size: int, *flags: str
) -> tuple[str, list[dict[str, Any]]]:
    """``axolotl train`` on a loadable recipe shrunk to 2 steps of one CPU process; its output and log history."""
    config.update(
        max_steps=2,
        micro_batch_size=micro_batch_size,
        gradient_accumulation_steps=1,
        bf16=False,
        gradient_checkpointing=False,
        save_steps=2,
        logging_steps=1,
        dataloader_num_workers=0,
        dataset_num_proc=1,
    )
    path = workdir / "recipe.yml"
    path.write_text(yaml.safe_dump(config))
    output = run_ok([AXOLOTL, "train", str(path), "--launcher", "python", *flags], workdir, 600)
    state = json.loads((workdir / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    return output, state["log_history"]


# -- every recipe: Axolotl's schema, as on the GPUs the header names -----------------------------------------------


def test_every_recipe_is_covered():
    real_model = "smollm2_135m_scale_sft"  # the CPU example on a real model: test_real_model.py
    assert {p.stem for p in RECIPE_DIR.glob("*.yaml")} == set(SFT_RECIPES) | {GRPO_RECIPE.stem, real_model}


@pytest.mark.parametrize(
    ("stem", "gpus", "zero_stage"),
    [(stem, r.gpus, r.zero_stage) for stem, r in SFT_RECIPES.items()]
    + [(GRPO_RECIPE.stem, GRPO_GPUS, GRPO_ZERO_STAGE)],
)
def test_recipe_validates_as_on_its_gpus_with_its_deepspeed_config(stem, gpus, zero_stage):
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    path = recipe_path(stem)
    header = path.read_text().split("\n\n", 1)[0]
    recipe = read_recipe(path)
    assert f"axolotl train recipes/axolotl/{path.name} --launcher accelerate -- --num_processes {gpus}" in header
    assert "estimate, not measured" in header
    assert recipe["deepspeed"] == f"recipes/deepspeed/zero{zero_stage}.json"
    deepspeed = ROOT / recipe["deepspeed"]
    assert json.loads(deepspeed.read_text())["zero_optimization"]["stage"] == zero_stage

    cfg = DictDefault({**recipe, "deepspeed": str(deepspeed)})
    prepare_plugins(cfg)
    capabilities = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": gpus, "n_node": 1, "compute_capability": "sm_90"}
    validated = validate_config(cfg, capabilities=capabilities, env_capabilities={"torch_version": "2.13.0"})
    assert validated.deepspeed == str(deepspeed)
    assert validated.bf16 is True and validated.gradient_checkpointing is True
    if stem in SFT_RECIPES:
        assert validated.loss == "scale" and validated.plugins == [PLUGIN]
        assert recipe_scale_options(recipe) == ScaleOptions()  # the recipes write the defaults out
        assert validated.micro_batch_size * validated.gradient_accumulation_steps * gpus == 64  # the global batch
    else:
        assert validated.rl == "grpo" and validated.get("loss") is None
        assert not [key for key in recipe if key.startswith("scale_")]


# -- SCALe-SFT recipes: load_cfg on a tiny model of their architecture ---------------------------------------------


@pytest.mark.parametrize("stem", list(SFT_RECIPES))
def test_sft_recipe_loads_on_a_tiny_model_of_its_architecture(stem, tiny_vlms, sft_data, tmp_path, restore_environ):
    from axolotl.integrations.base import PluginManager

    from scale_plugins.axolotl.trainer import ScaleAxolotlTrainer

    expected = SFT_RECIPES[stem]
    recipe = read_recipe(recipe_path(stem))
    cfg = load(loadable(recipe, tiny_vlms[expected.model_type], sft_data, tmp_path))

    assert cfg.model_config_type == expected.model_type and cfg.is_multimodal
    assert cfg.processor_type == "AutoProcessor" and cfg.processor_config == str(tiny_vlms[expected.model_type])
    # what Axolotl's multimodal path needs (the collator processes the images; it cannot pack)
    assert cfg.sample_packing is False and cfg.skip_prepare_dataset is True and cfg.remove_unused_columns is False
    assert cfg.chat_template == recipe["chat_template"]
    assert cfg.datasets[0].roles_to_train == ["assistant"]
    trainer_cls = PluginManager.get_instance().get_trainer_cls(cfg)
    assert issubclass(trainer_cls, ScaleAxolotlTrainer)
    assert trainer_cls.scale_bound_options == recipe_scale_options(recipe)


@pytest.mark.parametrize("stem", list(SFT_RECIPES))
def test_unfrozen_parameters_train_the_llm_and_projector_not_the_vision_tower(stem, tiny_vlms):
    from axolotl.utils.freeze import freeze_layers_except
    from transformers import AutoModelForImageTextToText

    expected = SFT_RECIPES[stem]
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlms[expected.model_type])
    freeze_layers_except(model, read_recipe(recipe_path(stem))["unfrozen_parameters"])
    names = {name: param.requires_grad for name, param in model.named_parameters()}
    vision = [n for n in names if n.startswith(expected.vision_tower) and not n.startswith(expected.projector)]
    projector = [n for n in names if n.startswith(expected.projector)]
    language = [n for n in names if n.startswith("model.language_model.")]
    assert vision and projector and language
    assert not any(names[n] for n in vision)
    assert all(names[n] for n in names if n not in vision), [n for n in names if n not in vision and not names[n]]


# -- LLaVA-NeXT: the recipe's turn markers ---------------------------------------------------------------------------

LLAVA = "llava_1_6_mistral_7b_scale_sft"
THINK_1, ANSWER_1 = "<think>\nThe square is red.\n</think>", "\n<answer>B</answer>"
THINK_2, ANSWER_2 = "<think>\n3 + 3 = 6.\n</think>", "\n<answer>6</answer>"


def llava_supervised_text(cfg: Any, role_boundaries: list[Any], image: Path) -> list[dict[str, Any]]:
    """Build the multimodal collator as Axolotl's trainer builder does (core/builders/causal.py) and collate two
    chats: the supervised runs of each, and the text SCALe tags as think and as answer."""
    from axolotl.loaders import load_processor, load_tokenizer
    from axolotl.processing_strategies import get_processing_strategy
    from axolotl.utils.chat_templates import get_chat_template_from_config
    from axolotl.utils.collators.mm_chat import MultiModalChatDataCollator

    from scale_plugins.core import SegmentTagger

    tokenizer = load_tokenizer(cfg)
    processor = load_processor(cfg, tokenizer)
    (dataset,) = cfg.datasets
    strategy = get_processing_strategy(
        processor,
        get_chat_template_from_config(cfg=cfg, tokenizer=tokenizer),
        cfg.chat_template,
        train_on_inputs=bool(cfg.train_on_inputs),
        roles_to_train=dataset.roles_to_train,
        train_on_eos=dataset.train_on_eos,
        role_boundaries_override=role_boundaries,
        field_messages=[dataset.field_messages],
        model_type=cfg.model_config_type,
    )

    def text(value: str) -> list[dict[str, str]]:
        return [{"type": "text", "text": value}]

    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "path": str(image)}, *text("What colour is it? A) blue B) red")],
            },
            {"role": "assistant", "content": text(THINK_1 + ANSWER_1)},
        ],
        [
            {"role": "user", "content": text("Is 2 + 2 = 4?")},
            {"role": "assistant", "content": text("<think>\n2 + 2 = 4.\n</think>\n<answer>yes</answer>")},
            {"role": "user", "content": text("And 3 + 3?")},
            {"role": "assistant", "content": text(THINK_2 + ANSWER_2)},
        ],
    ]
    batch = MultiModalChatDataCollator(tokenizer=tokenizer, processing_strategy=strategy)(
        [{"messages": c} for c in chats]
    )
    # the closer counted with its block, so that each turn's think text is its whole <think>...</think>
    options = ScaleOptions(think_close_segment="think")
    segments = SegmentTagger.from_tokenizer(tokenizer, options).tag(batch["labels"], shift=False).segment_ids
    results = []
    for ids, labels, segment_ids in zip(batch["input_ids"], batch["labels"], segments):
        runs, run = [], []
        for token, label in zip(ids.tolist(), labels.tolist()):
            if label != -100:
                run.append(token)
            elif run:
                runs.append(tokenizer.decode(run))
                run = []
        runs += [tokenizer.decode(run)] if run else []
        results.append(
            {
                "text": tokenizer.decode(ids, skip_special_tokens=False),
                "image_tokens": int((ids == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()),
                "runs": runs,
                "think": tokenizer.decode(ids[segment_ids == THINK]),
                "answer": tokenizer.decode(ids[segment_ids == ANSWER]),
            }
        )
    return results


@pytest.fixture
def llava_cfg(tiny_vlms, sft_data, tmp_path, restore_environ) -> Any:
    return load(loadable(read_recipe(recipe_path(LLAVA)), tiny_vlms["llava_next"], sft_data, tmp_path))


@pytest.fixture
def red_square(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (28, 28), (255, 0, 0)).save(path)
    return path


def assert_only_assistant_turns_supervised(results: list[dict[str, Any]]) -> None:
    image_chat, two_turns = results
    assert image_chat["text"].startswith("<s>[INST] <image>") and " [/INST] <think>" in image_chat["text"]
    assert image_chat["image_tokens"] > 1  # the processor expanded the image; none of those tokens is supervised
    assert image_chat["runs"] == [THINK_1 + ANSWER_1 + "</s>"]
    assert two_turns["runs"] == ["<think>\n2 + 2 = 4.\n</think>\n<answer>yes</answer></s>", THINK_2 + ANSWER_2 + "</s>"]
    # SCALe: think is the think block, answer the rest of each assistant turn; no prompt text in either
    assert image_chat["think"] == THINK_1 and image_chat["answer"] == ANSWER_1 + "</s>"
    assert two_turns["think"] == "<think>\n2 + 2 = 4.\n</think> " + THINK_2
    assert two_turns["answer"] == "\n<answer>yes</answer></s>" + ANSWER_2 + "</s>"


def test_llava_recipe_supervises_only_the_assistant_turns(llava_cfg, red_square):
    """The recipe's template and ``role_boundaries``, as Axolotl would use them if it passed them on as plain dicts."""
    assert_only_assistant_turns_supervised(
        llava_supervised_text(llava_cfg, [dict(b) for b in llava_cfg.role_boundaries], red_square)
    )


def test_llava_recipe_role_boundaries_through_the_plugin(llava_cfg, red_square):
    """What the trainer builder passes (``list(cfg.role_boundaries)``) once ``ScalePlugin.pre_model_load`` ran, as
    it does before the model is loaded: the entries are plain dicts and only the assistant turns are supervised."""
    from axolotl.integrations.base import PluginManager

    PluginManager.get_instance().pre_model_load(llava_cfg)
    assert all(type(entry) is dict for entry in llava_cfg.role_boundaries)
    assert_only_assistant_turns_supervised(
        llava_supervised_text(llava_cfg, list(llava_cfg.role_boundaries), red_square)
    )


@pytest.mark.xfail(
    strict=True,
    raises=TypeError,
    reason="Axolotl 0.19.0 bug: load_cfg turns role_boundaries entries into DictDefault, whose missing attributes are "
    "None, so processing_strategies._resolve_role_boundary_override calls spec.model_dump() on None",
)
def test_axolotl_role_boundaries_bug_without_the_plugin_hook(llava_cfg, red_square):
    """The entries as Axolotl 0.19.0 passes them when no plugin converts them. XPASS means Axolotl fixed it: then
    ``plain_role_boundaries`` can go (scale_plugins/axolotl/plugin.py), with this marker."""
    assert_only_assistant_turns_supervised(
        llava_supervised_text(llava_cfg, list(llava_cfg.role_boundaries), red_square)
    )


@pytest.mark.slow
@pytest.mark.parametrize(("stem", "model_type"), [(LLAVA, "llava_next"), ("gemma3_4b_scale_sft", "gemma3")])
def test_recipe_trains_assistant_turns_only_with_axolotl_train(tiny_vlms, tmp_path, stem, model_type):
    """``axolotl train`` on the LLaVA-NeXT and Gemma 3 recipes as written (DeepSpeed and bf16 off for one CPU
    process), on tiny models with their processors: SCALe counts exactly the tokens Axolotl trains, the assistant
    turns (with no turn markers it would be every token, prompt included: then Axolotl's count exceeds SCALe's by the
    first token of each sample, see test_coverage.py). LLaVA-NeXT's markers come from the recipe's `role_boundaries`,
    Gemma 3's are built into Axolotl."""
    from PIL import Image

    rows = []
    for i, (colour, letter) in enumerate([((255, 0, 0), "B"), ((0, 0, 255), "A")] * 2):
        path = tmp_path / f"image_{i}.png"
        Image.new("RGB", (28, 28), colour).save(path)
        trace = " ".join(["The square is one colour."] * (1 + i))
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "path": str(path)},
                            {"type": "text", "text": f"Question {i}: what colour is it? A) blue B) red"},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": f"<think>\n{trace}\n</think>\n<answer>{letter}</answer>"}],
                    },
                ]
            }
        )
    data = write_jsonl(tmp_path / "cot.jsonl", rows)
    config = loadable(read_recipe(recipe_path(stem)), tiny_vlms[model_type], data, tmp_path)
    output, history = train_two_cpu_steps(config, tmp_path, 2)
    assert "SCALe active: ScaleAxolotlTrainer" in output
    if stem == LLAVA:
        assert "SCALe: passing 2 role_boundaries entries on as plain dicts" in output
        assert "role_boundaries_override=set" in output
    else:
        assert "role_boundaries_override=none" in output and "no built-in role boundaries" not in output

    logs = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2]
    trainable = [entry["tokens/trainable"] for entry in logs]  # cumulative, like tokens/total
    total = [entry["tokens/total"] for entry in logs]
    for entry, step_trainable, step_total in zip(
        logs, [trainable[0], trainable[1] - trainable[0]], [total[0], total[1] - total[0]]
    ):
        assert entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0
        assert step_trainable < step_total / 2  # the prompts (image tokens included) are not trained
        assert entry["scale/think_tokens"] + entry["scale/answer_tokens"] == step_trainable


# -- GRPO --------------------------------------------------------------------------------------------------------------


def test_grpo_recipe_hands_trl_our_rewards_and_its_settings(tiny_model_dir, tmp_path, restore_environ):
    from axolotl.core.trainers.grpo import GRPOStrategy

    from scale_plugins import rewards

    recipe = read_recipe(GRPO_RECIPE)
    data = write_jsonl(tmp_path / "rl.jsonl", [{"prompt": [{"role": "user", "content": "2 + 2?"}], "solution": "4"}])
    cfg = load(loadable(recipe, tiny_model_dir, data, tmp_path))

    assert cfg.rl == "grpo" and "type" not in cfg.datasets[0]  # rows are used as they are
    assert GRPOStrategy.set_trainer_args(cfg) == [[rewards.format_reward, rewards.accuracy_reward]]
    args = GRPOStrategy.set_training_args_kwargs(cfg)
    assert args["use_vllm"] is True and args["vllm_mode"] == "colocate"
    assert args["vllm_gpu_memory_utilization"] == 0.3 and args["vllm_enable_sleep_mode"] is False
    assert args["num_generations"] == 8 and args["max_completion_length"] == 1024
    assert args["reward_weights"] == [0.5, 1.0] and args["temperature"] == 1.0
    assert cfg.trl.beta == 0.0 and cfg.learning_rate == 1e-6
    # generation batch (micro-batch x accumulation x GPUs) must hold whole groups of generations
    assert cfg.micro_batch_size * cfg.gradient_accumulation_steps * GRPO_GPUS % args["num_generations"] == 0


def format_following_model(path: Path) -> list[str]:
    """A tiny Qwen2 that always answers ``<think>ok</think><answer>7</answer>``; returns that completion's tokens.

    Attention and MLP outputs are zero, so the last hidden state is the current token's embedding, and the LM head
    maps each token of the chain to the next one (a bigram model): the completion does not depend on sampling.
    ``<think>`` & co. are added (non-special) tokens, as in Qwen3, so TRL's decoding keeps them.
    """
    import torch

    from scale_plugins.testing import bpe_tokenizer, tiny_causal_lm

    tokenizer = copy.deepcopy(bpe_tokenizer())
    tokenizer.add_tokens(["<think>", "</think>", "<answer>", "</answer>"])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "?"}], add_generation_prompt=True, tokenize=False
    )
    last_prompt_token = tokenizer(prompt, add_special_tokens=False)["input_ids"][-1]
    completion = ["<think>", *tokenizer.tokenize("ok"), "</think>", "<answer>", *tokenizer.tokenize("7"), "</answer>"]
    chain = [last_prompt_token, *tokenizer.convert_tokens_to_ids(completion), tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain)

    model = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1)
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(32, model.config.vocab_size, bias=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "embed_tokens.weight", "lm_head.weight")):
                param.zero_()
        for i, (token, next_token) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token, i] = 1.0
            model.lm_head.weight[next_token, i] = 10.0  # logit ~57 after the final RMSNorm: no other token is sampled
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return completion


@pytest.mark.slow
def test_grpo_recipe_two_steps_on_cpu_without_vllm(tmp_path):
    """The recipe with `use_vllm: true`, switched off on the command line as its header says (vLLM is not installed
    here, so generating with it would fail). Two prompts per step, one whose solution the model gets right."""
    completion = format_following_model(tmp_path / "sft")
    rows = [
        {"prompt": [{"role": "user", "content": "What is 3 + 4?"}], "solution": "7"},
        {"prompt": [{"role": "user", "content": "What is 4 + 4?"}], "solution": "8"},
    ]
    data = write_jsonl(tmp_path / "rl.jsonl", rows)
    recipe = read_recipe(GRPO_RECIPE)
    assert recipe["trl"]["use_vllm"] is True
    config = loadable(recipe, tmp_path / "sft", data, tmp_path)
    config["trl"].update(num_generations=4, max_completion_length=16, log_completions=False)
    # micro-batch 8 = 2 prompts x 4 generations: both rows in every step
    _, history = train_two_cpu_steps(config, tmp_path, 8, "--no-trl.use-vllm")
    logs = [entry for entry in history if "reward" in entry]
    assert [entry["step"] for entry in logs] == [1, 2]
    for entry in logs:
        assert entry["completions/mean_length"] == len(completion) + 1  # + <|im_end|>
        assert entry["rewards/format_reward/mean"] == 1.0
        assert entry["rewards/accuracy_reward/mean"] == 0.5  # "7" is right for one prompt, wrong for the other
        assert entry["reward"] == pytest.approx(0.5 * 1.0 + 1.0 * 0.5)  # the recipe's reward_weights
