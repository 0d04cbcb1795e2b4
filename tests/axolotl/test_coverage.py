"""End-to-end Axolotl training with `loss: scale` for the "Works with" cases not covered by test_train.py.

Real Axolotl training (its Python API, what `axolotl train` calls; CPU, a few steps, samples under 128 tokens):

- LoRA (`adapter: lora`): SCALe trains, and only the LoRA matrices are trainable;
- a chat-template dataset whose assistant messages carry the trace in `reasoning_content` (Axolotl's
  `field_thinking` / `template_thinking_key`, default `reasoning_content`), rendered as `<think>...</think>`
  by the template: SCALe finds the think tokens, exactly as many as with the trace inline in `content`;
- `train_on_eos: turn | last | all`: the supervised EOS tokens count as answer tokens, so the answer count
  moves by exactly the number of EOS tokens each variant supervises, the think count does not move;
- multimodal (tiny LLaVA, `processor_type`, image + text chat, no packing): SCALe tags the supervised text;
- `scale_empty_think`: a mix of samples with a trace and samples with an empty `<think>\n\n</think>\n\n` before a
  plain answer: with `ignore` the empty blocks' tokens count in no segment, with `think` they count as think.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from scale_plugins.core import ScaleOptions, segment_weights

from .conftest import PYTHON, axolotl_config, cot_samples, run_ok, scale_keys, write_jsonl

pytestmark = pytest.mark.slow

RUN_AXOLOTL = Path(__file__).with_name("run_axolotl.py")

# run_axolotl.run_one, plus what the trainer's model trains (names and sizes of the trainable parameters).
# ChatML, with an assistant's `reasoning_content` rendered as <think>...</think> before its content (Qwen3-style).
REASONING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "<think>\n{{ message['reasoning_content'] }}\n</think>\n{% endif %}"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def run_many(runs: dict[str, dict[str, Any]], workdir: Path, timeout: int = 480) -> dict[str, dict[str, Any]]:
    """Run Axolotl trainings in one subprocess; {name: {trainer, log_history, trainable, ...}}."""
    spec, out = workdir / "runs.json", workdir / "results.json"
    spec.write_text(json.dumps(runs))
    output = run_ok([PYTHON, str(RUN_AXOLOTL), str(spec), str(out)], workdir, timeout)
    results = json.loads(out.read_text())
    for r in results.values():
        r["output"] = output
    return results


def train_logs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in history if "loss" in entry]


def assert_scale_ran(result: dict[str, Any], max_steps: int, schedule: str = "cosine") -> list[dict[str, Any]]:
    """SCALe trained: its trainer, weights on the schedule, both segments counted, finite losses."""
    assert result["trainer"] == "ScaleAxolotlTrainer"
    logs = train_logs(result["log_history"])
    assert [entry["step"] for entry in logs] == list(range(1, max_steps + 1))
    for entry in logs:
        think, answer = segment_weights(entry["step"] - 1, max_steps, ScaleOptions(schedule=schedule))
        assert entry["scale/answer_weight"] == pytest.approx(answer, abs=1e-12)
        assert entry["scale/think_weight"] == pytest.approx(think, abs=1e-12)
        assert entry["scale/think_tokens"] > 0 and entry["scale/answer_tokens"] > 0
        for key in ("loss", "scale/think_loss", "scale/answer_loss", "grad_norm"):
            assert math.isfinite(entry[key]), key
        combined = entry["scale/think_weight"] * entry["scale/think_loss"]
        combined += entry["scale/answer_weight"] * entry["scale/answer_loss"]
        assert entry["loss"] == pytest.approx(combined, abs=1e-5)
    return logs


def reasoning_samples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """cot_samples with the trace moved from `<think>...</think>` in `content` to `reasoning_content`."""
    rows = []
    for row in cot_samples(n, seed=seed):
        user, assistant = row["messages"]
        trace, answer = assistant["content"].removeprefix("<think>\n").split("\n</think>\n")
        rows.append({"messages": [user, {"role": "assistant", "reasoning_content": trace, "content": answer}]})
    return rows


def multi_turn_samples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Two user/assistant exchanges per sample (4 EOS tokens: 2 after user turns, 2 after assistant turns).

    One-step traces only (every 4th cot_sample), so no sample exceeds 128 tokens (Axolotl drops longer ones)."""
    first, second = cot_samples(4 * n, seed=seed)[::4], cot_samples(4 * n, seed=seed + 1)[::4]
    return [{"messages": a["messages"] + b["messages"]} for a, b in zip(first, second)]


# -- LoRA, reasoning_content, train_on_eos: one process ---------------------------------------------------

STEPS = 3
EOS_SAMPLES = 4


@pytest.fixture(scope="module")
def text_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("coverage_text")
    cot = write_jsonl(workdir / "cot.jsonl", cot_samples(12, seed=2))
    reasoning = write_jsonl(workdir / "reasoning.jsonl", reasoning_samples(12, seed=2))
    multi_turn = write_jsonl(workdir / "multi_turn.jsonl", multi_turn_samples(EOS_SAMPLES, seed=3))
    several_steps = {"max_steps": STEPS, "micro_batch_size": 2, "gradient_accumulation_steps": 2}
    jinja = {"chat_template": "jinja", "chat_template_jinja": REASONING_TEMPLATE}

    def config(name: str, data: Path, **overrides: Any) -> dict[str, Any]:
        return axolotl_config(tiny_model_dir, data, workdir / name, **overrides)

    def eos_config(train_on_eos: str) -> dict[str, Any]:
        cfg = config(f"eos_{train_on_eos}", multi_turn, micro_batch_size=EOS_SAMPLES, max_steps=1, **scale_keys())
        cfg["datasets"][0]["train_on_eos"] = train_on_eos
        return cfg

    lora = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_linear": True}
    # Axolotl turns its fused LoRA kernels on by default for LoRA; they are CUDA-only (Triton / device="cuda")
    lora |= {"lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False}
    runs = {
        "lora": config("lora", cot, **several_steps, **lora, **scale_keys()),
        "reasoning_content": config("reasoning", reasoning, **several_steps, **jinja, **scale_keys()),
        # the same conversations with the trace inline in `content`, through the same template
        "inline_think": config("inline", cot, **several_steps, **jinja, **scale_keys()),
        **{f"eos_{v}": eos_config(v) for v in ("turn", "last", "all")},
    }
    return run_many(runs, workdir)


def test_lora_trains_with_scale(text_runs):
    assert_scale_ran(text_runs["lora"], STEPS)
    assert "SCALe active: ScaleAxolotlTrainer" in text_runs["lora"]["output"]


def test_lora_trains_only_the_lora_parameters(text_runs):
    lora = text_runs["lora"]
    trainable = lora["trainable"]
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable), trainable
    # every linear layer of both blocks (q, k, v, o, gate, up, down) carries an A and a B
    assert len(trainable) == 2 * 2 * 7
    assert 0 < lora["trainable_numel"] < 0.2 * lora["total_numel"]


def test_reasoning_content_is_rendered_as_think_and_scale_finds_it(text_runs):
    reasoning = assert_scale_ran(text_runs["reasoning_content"], STEPS)
    inline = assert_scale_ran(text_runs["inline_think"], STEPS)
    # same rendered text, same tokens: SCALe splits them the same way, wherever the trace came from
    for r, i in zip(reasoning, inline):
        for key in ("tokens/trainable", "scale/think_tokens", "scale/answer_tokens"):
            assert r[key] == i[key], key
        assert r["loss"] == pytest.approx(i["loss"], abs=1e-5)
    # and the think segment is most of the supervised text (the trace), not just the tags
    assert all(r["scale/think_tokens"] > r["scale/answer_tokens"] for r in reasoning)


def test_train_on_eos_counts_the_supervised_eos_as_answer(text_runs):
    steps = {v: train_logs(text_runs[f"eos_{v}"]["log_history"]) for v in ("turn", "last", "all")}
    for v, logs in steps.items():
        assert text_runs[f"eos_{v}"]["trainer"] == "ScaleAxolotlTrainer", v
        assert len(logs) == 1 and math.isfinite(logs[0]["loss"]), v
        assert logs[0]["scale/think_tokens"] > 0 and logs[0]["scale/answer_tokens"] > 0, v
    turn, last, every = (steps[v][0] for v in ("turn", "last", "all"))
    # think tokens never move: the EOS tokens are outside every <think> block
    assert turn["scale/think_tokens"] == last["scale/think_tokens"] == every["scale/think_tokens"]
    # turn: the EOS of both assistant turns; last: of the final turn only; all: of the user turns too
    assert turn["scale/answer_tokens"] - last["scale/answer_tokens"] == EOS_SAMPLES
    assert every["scale/answer_tokens"] - turn["scale/answer_tokens"] == 2 * EOS_SAMPLES
    for a, b in ((turn, last), (every, turn)):
        assert a["tokens/trainable"] - b["tokens/trainable"] == a["scale/answer_tokens"] - b["scale/answer_tokens"]


# -- scale_empty_think: samples with a trace mixed with samples whose think block is empty -------------------

EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"


def empty_think_samples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Plain answers behind an empty think block, as Qwen3 chat templates render non-thinking turns."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        answer = f"{EMPTY_THINK_BLOCK}<answer>{a + b}</answer>"
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Quick {i}: {a} + {b}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


TRACED, EMPTY = 4, 3


@pytest.fixture(scope="module")
def empty_think_runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """First (only) optimizer step, all samples in one micro-batch, of: the traced samples alone, the empty-block
    samples alone and the two mixed, each with `scale_empty_think: ignore` and `think`."""
    workdir = tmp_path_factory.mktemp("empty_think")
    traced, empty = cot_samples(TRACED, seed=5), empty_think_samples(EMPTY, seed=6)
    mixed = [row for pair in zip(traced, empty) for row in pair] + traced[EMPTY:]
    data = {
        "traced": (write_jsonl(workdir / "traced.jsonl", traced), TRACED),
        "empty": (write_jsonl(workdir / "empty.jsonl", empty), EMPTY),
        "mixed": (write_jsonl(workdir / "mixed.jsonl", mixed), TRACED + EMPTY),
    }
    runs = {}
    for name, (path, n) in data.items():
        for policy in ("ignore", "think"):
            if name == "traced" and policy == "think":
                continue  # no empty block: the policy changes nothing
            runs[f"{name}_{policy}"] = axolotl_config(
                tiny_model_dir,
                path,
                workdir / f"{name}_{policy}",
                micro_batch_size=n,
                sequence_len=512,  # Axolotl drops longer samples silently: keep every one
                **scale_keys(empty_think=policy, think_close_segment="think"),  # the closer counted with the block
            )
    results = run_many(runs, workdir)
    steps = {}
    for name, result in results.items():
        assert result["trainer"] == "ScaleAxolotlTrainer", name
        [step] = train_logs(result["log_history"])
        steps[name] = step
    return steps


def segment_total(step: dict[str, Any]) -> float:
    return step["scale/think_tokens"] + step["scale/answer_tokens"]


def test_empty_think_ignore_leaves_the_empty_blocks_out_of_every_segment(empty_think_runs):
    runs = empty_think_runs
    traced, empty, mixed = runs["traced_ignore"], runs["empty_ignore"], runs["mixed_ignore"]
    # the empty blocks count as think nowhere: the mixed step has exactly the traced samples' think tokens
    assert empty["scale/think_tokens"] == 0
    assert mixed["scale/think_tokens"] == traced["scale/think_tokens"] > 0
    # and as answer nowhere: the answers of both kinds of samples, nothing more
    assert mixed["scale/answer_tokens"] == traced["scale/answer_tokens"] + empty["scale/answer_tokens"]
    # the same tokens are supervised with either policy; `ignore` leaves exactly the empty blocks' tokens uncounted
    blocks = runs["empty_think"]["scale/think_tokens"]
    assert EMPTY <= blocks <= 12 * EMPTY  # the tags and newlines of 3 blocks, not the answers
    assert runs["empty_think"]["tokens/trainable"] == empty["tokens/trainable"]
    assert segment_total(runs["empty_think"]) - segment_total(empty) == blocks
    assert runs["mixed_think"]["tokens/trainable"] == mixed["tokens/trainable"]
    assert segment_total(runs["mixed_think"]) - segment_total(mixed) == blocks
    for step in (traced, empty, mixed):
        assert math.isfinite(step["loss"])
    # and the log says how many blocks were left out
    assert [step["scale/empty_think_blocks"] for step in (traced, empty, mixed)] == [0, EMPTY, EMPTY]


def test_empty_think_think_counts_the_empty_blocks_as_think(empty_think_runs):
    runs = empty_think_runs
    traced, empty, mixed = runs["traced_ignore"], runs["empty_think"], runs["mixed_think"]
    assert empty["scale/think_tokens"] >= EMPTY
    assert mixed["scale/think_tokens"] == traced["scale/think_tokens"] + empty["scale/think_tokens"]
    assert mixed["scale/answer_tokens"] == runs["mixed_ignore"]["scale/answer_tokens"]
    assert empty["scale/answer_tokens"] == runs["empty_ignore"]["scale/answer_tokens"]
    # under sample normalization each empty block is a think sample of its own: the think loss changes
    assert abs(mixed["scale/think_loss"] - runs["mixed_ignore"]["scale/think_loss"]) > 1e-4


# -- multimodal: tiny LLaVA, image + text chats ------------------------------------------------------------

MM_STEPS = 2


def image_chat_samples(n: int, image_dir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """cot_samples whose user turn carries a local image (a tiny PNG of one colour) before the question."""
    from PIL import Image

    rng = random.Random(seed)
    rows = []
    for i, row in enumerate(cot_samples(n, seed=seed)):
        user, assistant = row["messages"]
        path = image_dir / f"image_{i}.png"
        Image.new("RGB", (28, 28), tuple(rng.randrange(256) for _ in range(3))).save(path)
        content = [{"type": "image", "path": str(path)}, {"type": "text", "text": user["content"]}]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": assistant["content"]}]},
                ]
            }
        )
    return rows


@pytest.fixture(scope="module")
def multimodal_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from scale_plugins.testing import tiny_llava

    workdir = tmp_path_factory.mktemp("coverage_multimodal")
    model_dir = workdir / "tiny_llava"
    model, processor = tiny_llava()
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (workdir / "images").mkdir()
    data = write_jsonl(workdir / "image_chat.jsonl", image_chat_samples(8, workdir / "images", seed=4))
    config = axolotl_config(
        model_dir,
        data,
        workdir / "mm",
        model_type="AutoModelForImageTextToText",
        processor_type="AutoProcessor",
        skip_prepare_dataset=True,
        remove_unused_columns=False,
        sample_packing=False,
        max_steps=MM_STEPS,
        micro_batch_size=2,
        gradient_accumulation_steps=2,
        **scale_keys(),
    )
    return run_many({"multimodal": config}, workdir)["multimodal"]


def test_multimodal_llava_trains_with_scale(multimodal_run):
    logs = assert_scale_ran(multimodal_run, MM_STEPS)
    assert "SCALe active: ScaleAxolotlTrainer" in multimodal_run["output"]
    # SCALe tags exactly the supervised tokens that are predicted. Axolotl 0.19 has no role markers for LLaVA
    # (its multimodal collator then masks only pad and image tokens, so the whole chat is supervised, starting
    # with the first token, which no position predicts); this run declares no `role_boundaries` (the LLaVA recipe
    # does: test_recipes.py). So: Axolotl's count (unshifted, cumulative) = SCALe's + one first token per sample.
    trainable = [entry["tokens/trainable"] for entry in logs]
    samples_per_step = 2 * 2
    for entry, step_trainable in zip(logs, [trainable[0]] + [b - a for a, b in zip(trainable, trainable[1:])]):
        assert entry["scale/think_tokens"] + entry["scale/answer_tokens"] == step_trainable - samples_per_step
