"""End-to-end coverage of the issue's "Works with" list: LoRA / freeze, a reasoning template (``qwen3``),
a multimodal model (LLaVA) and DeepSpeed ZeRO-3. Tiny local models, CPU, a few steps each."""

from __future__ import annotations

import json
import math

import pytest
from transformers import TrainerCallback

from scale_plugins.core import ScaleOptions, answer_weight
from scale_plugins.data import synthetic_cot

from .helpers import TinySetup, train_config, train_in_process

pytestmark = pytest.mark.slow


def _assert_scale_ran(logs, steps, options=None, think=True):
    """scale/* weights follow the (default cosine) schedule, think / answer tokens > 0, losses finite."""
    options = options or ScaleOptions()
    assert len(logs) == steps
    expected = [answer_weight(step, steps, options) for step in range(steps)]
    assert [entry["scale/answer_weight"] for entry in logs] == pytest.approx(expected)
    assert [entry["scale/think_weight"] for entry in logs] == pytest.approx([1 - w for w in expected])
    for entry in logs:
        assert entry["scale/answer_tokens"] > 0
        if think:
            assert entry["scale/think_tokens"] > 0
        for key in ("loss", "grad_norm", "scale/answer_loss") + (("scale/think_loss",) if think else ()):
            assert math.isfinite(entry[key]), (key, entry)


class _Trainable(TrainerCallback):
    """Names of the parameters that require a gradient when training starts."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.names = [name for name, param in model.named_parameters() if param.requires_grad]
        self.total = sum(1 for _ in model.named_parameters())


# ---------------------------------------------------------------- 1. LoRA and freeze


def test_lora_trains_only_the_adapter_with_scale(tiny, patched, tmp_path):
    trainable = _Trainable()
    out = tmp_path / "lora"
    config = train_config(tiny, out, finetuning_type="lora", lora_target="all", lora_rank=4, max_steps=3)
    logs = train_in_process(config, [trainable])
    _assert_scale_ran(logs, 3)
    assert trainable.names and all("lora_" in name for name in trainable.names), trainable.names
    assert len(trainable.names) < trainable.total
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()


def test_freeze_trains_the_last_layer_with_scale(tiny, patched, tmp_path):
    trainable = _Trainable()
    config = train_config(tiny, tmp_path / "freeze", finetuning_type="freeze", freeze_trainable_layers=1)
    logs = train_in_process(config, [trainable])
    _assert_scale_ran(logs, 2)
    # 2 layers, the last one trains: only "layers.1." parameters
    assert trainable.names and all(".layers.1." in name for name in trainable.names), trainable.names


# ---------------------------------------------------------------- 2. reasoning template: qwen3


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory) -> TinySetup:
    """A tiny Qwen2-architecture model with the real Qwen3 tokenizer (<think> 151667, </think> 151668)."""
    from scale_plugins.testing import qwen_tokenizer, tiny_causal_lm

    root = tmp_path_factory.mktemp("qwen3")
    tokenizer = qwen_tokenizer(qwen3_specials=True)
    tiny_causal_lm(tokenizer, hidden_size=16, num_layers=1, seed=0).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = root / "data"
    data.mkdir()
    samples = synthetic_cot(8, seed=0, min_ops=1, max_ops=2)
    with_think = [
        {"instruction": s["messages"][0]["content"], "input": "", "output": s["messages"][1]["content"]}
        for s in samples
    ]
    no_think = [
        {**row, "output": f"<answer>{s['solution']}</answer>"} for row, s in zip(with_think, samples, strict=True)
    ]
    # Qwen3's own layout "<think>\n...\n</think>\n\n" (the synthetic data has a single "\n" after </think>)
    qwen_layout = [{**row, "output": row["output"].replace("</think>\n", "</think>\n\n")} for row in with_think]
    for name, rows in (("think", with_think), ("plain", no_think), ("qwen_layout", qwen_layout)):
        (data / f"{name}.json").write_text(json.dumps(rows))
    info = {name: {"file_name": f"{name}.json"} for name in ("think", "plain", "qwen_layout")}
    (data / "dataset_info.json").write_text(json.dumps(info))
    return TinySetup(root / "model", data)


def _qwen3_run(qwen3, out, dataset, enable_thinking, **overrides):
    config = train_config(
        qwen3,
        out,
        dataset=dataset,
        template="qwen3",
        enable_thinking=enable_thinking,
        **{"per_device_train_batch_size": 2, "max_steps": 1, **overrides},
    )
    return train_in_process(config)


def test_qwen3_template_tags_the_think_traces(qwen3, patched, tmp_path):
    """Answers with ``<think>...</think>`` (single special tokens in Qwen3's vocabulary) train with think > 0."""
    logs = _qwen3_run(qwen3, tmp_path / "think", "think", enable_thinking=True, max_steps=2)
    _assert_scale_ran(logs, 2)
    assert all(entry["scale/think_tokens"] > 10 for entry in logs)  # a real trace, not only the tags
    assert "scale/steps_without_think" not in logs[-1] or logs[-1]["scale/steps_without_think"] == 0


def test_qwen3_answers_without_think_get_an_empty_think_block(qwen3, patched, tmp_path):
    """LLaMA-Factory's ``ReasoningTemplate`` (``qwen3``) with ``enable_thinking: true`` prepends
    ``<think>\\n\\n</think>\\n\\n`` to the *supervised* response of every answer that has no think block
    (``encode_oneturn``: "add empty cot ... do compute loss"). Qwen3's tokenizer encodes it as 4 tokens
    ``[<think>, "\\n\\n", </think>, "\\n\\n"]``. With ``scale_empty_think: think`` SCALe trains the tags and the
    whitespace between them as think (3 tokens per sample; the trailing "\\n\\n" is answer). With the default
    ``ignore`` those 3 tokens are in no segment: no think tokens, the same answer tokens, and the step has no think.
    With ``enable_thinking: false`` the same empty block goes to the *prompt* (no loss): think_tokens == 0 and the
    step counts in ``scale/steps_without_think`` (the answer segment alone trains)."""
    # the closer counted with its block (think_close_segment: think), so a block's three tokens stay together
    closer = {"scale_think_close_segment": "think"}
    trained = _qwen3_run(qwen3, tmp_path / "think", "plain", enable_thinking=True, scale_empty_think="think", **closer)
    _assert_scale_ran(trained, 1)
    assert trained[0]["scale/think_tokens"] == 3 * 2  # 2 samples x (<think>, "\n\n", </think>)

    ignored = _qwen3_run(
        qwen3, tmp_path / "ignore", "plain", enable_thinking=True, scale_on_missing_think="ignore", **closer
    )
    _assert_scale_ran(ignored, 1, think=False)
    assert ignored[0]["scale/think_tokens"] == 0
    assert ignored[0]["scale/answer_tokens"] == trained[0]["scale/answer_tokens"]

    off = _qwen3_run(qwen3, tmp_path / "off", "plain", enable_thinking=False, scale_on_missing_think="warn", **closer)
    _assert_scale_ran(off, 1, think=False)
    assert off[0]["scale/think_tokens"] == 0
    assert off[0]["scale/steps_without_think"] == 1
    assert off[0]["scale/answer_tokens"] == trained[0]["scale/answer_tokens"] - 2  # the "\n\n" after </think>


def test_qwen3_mixed_data_leaves_only_the_empty_think_blocks_out(qwen3, patched, tmp_path):
    """Mixed data (answers with a trace and answers without) under ``qwen3`` with ``enable_thinking: true``: the
    empty blocks LLaMA-Factory adds are in no segment with ``scale_empty_think: ignore`` (the default), and think
    with ``think``; the real traces are think either way, and the answers are the same."""
    runs = {}
    for policy in ("ignore", "think"):
        runs[policy] = _qwen3_run(
            qwen3, tmp_path / policy, "think,plain", enable_thinking=True, scale_empty_think=policy,
            per_device_train_batch_size=16, mix_strategy="concat", scale_think_close_segment="think",
        )[0]  # fmt: skip
    rows = 8  # answers without a trace in the step (the "plain" half): one empty block each
    assert runs["think"]["scale/think_tokens"] - runs["ignore"]["scale/think_tokens"] == 3 * rows
    assert runs["ignore"]["scale/think_tokens"] > 10 * rows  # the real traces
    assert runs["ignore"]["scale/answer_tokens"] == runs["think"]["scale/answer_tokens"]
    for policy in ("ignore", "think"):
        assert math.isfinite(runs[policy]["loss"]) and runs[policy]["scale/think_tokens"] > 0
    assert abs(runs["think"]["scale/think_loss"] - runs["ignore"]["scale/think_loss"]) > 1e-6


def test_qwen3_thinking_disabled_removes_only_qwen3_layout_traces(qwen3, patched, tmp_path):
    """``enable_thinking: false`` strips the traces of the answers (``remove_thought``), but its regex is the
    template's exact ``thought_words`` ``"<think>\\n" ... "\\n</think>\\n\\n"``: traces in Qwen3's layout are
    removed (think_tokens == 0, the empty block goes to the prompt), a trace followed by a single newline
    (``</think>\\n<answer>``) is kept and still supervised, and SCALe tags it as think."""
    removed = _qwen3_run(
        qwen3, tmp_path / "qwen", "qwen_layout", enable_thinking=False, scale_on_missing_think="ignore"
    )
    _assert_scale_ran(removed, 1, think=False)
    assert removed[0]["scale/think_tokens"] == 0

    kept = _qwen3_run(qwen3, tmp_path / "kept", "think", enable_thinking=False)
    _assert_scale_ran(kept, 1)
    assert kept[0]["scale/think_tokens"] > 10


# ---------------------------------------------------------------- 3. multimodal: LLaVA


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> TinySetup:
    """A tiny LLaVA (CLIP + Qwen2, processor saved with it) and a sharegpt dataset with local image files.

    A short system prompt: the ``llava`` template's default one is 124 tokens of the tiny BPE vocabulary, and
    cutoff_len 128 would truncate the prompt (the ``<image>`` tokens with it)."""
    from PIL import Image

    from scale_plugins.testing import tiny_llava

    root = tmp_path_factory.mktemp("llava")
    model, processor = tiny_llava(hidden_size=32)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    data = root / "data"
    data.mkdir()
    rows = []
    for i, s in enumerate(synthetic_cot(8, seed=0, min_ops=1, max_ops=2)):
        image = data / f"img{i}.png"
        Image.new("RGB", (28, 28), color=(30 * i % 255, 80, 160)).save(image)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>" + s["messages"][0]["content"]},
                    {"role": "assistant", "content": s["messages"][1]["content"]},
                ],
                "system": "Be brief.",
                "images": [str(image)],
            }
        )
    (data / "mm.json").write_text(json.dumps(rows))
    info = {
        "mm": {
            "file_name": "mm.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "system": "system", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    return TinySetup(root / "model", data)


def test_llava_trains_with_scale(llava, patched, tmp_path):
    config = train_config(llava, tmp_path / "llava", dataset="mm", template="llava", per_device_train_batch_size=2)
    logs = train_in_process(config)
    _assert_scale_ran(logs, 2)


@pytest.mark.parametrize(("model_type", "template"), [("llava_next", "llava_next_mistral"), ("gemma3", "gemma3")])
def test_paper_architectures_train_with_scale(llava, patched, tmp_path, model_type, template):
    """LLaVA-NeXT (Mistral) and Gemma 3, tiny models with their processors, with the template their recipe uses
    (recipes/llamafactory/): LLaMA-Factory's multimodal plugin expands the images, and SCALe trains. (Qwen2.5-VL:
    test_qwen2_5_vl.py, through its recipe.)"""
    from scale_plugins import testing as tiny

    build = {"llava_next": tiny.tiny_llava_next, "gemma3": tiny.tiny_gemma3}[model_type]
    model, processor = build(tmp_path / "tokenizer")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    setup = TinySetup(tmp_path / "model", llava.dataset_dir)
    config = train_config(
        setup, tmp_path / "out", dataset="mm", template=template, per_device_train_batch_size=2, cutoff_len=256
    )
    logs = train_in_process(config)
    _assert_scale_ran(logs, 2)
    for entry in logs:  # only the response is supervised: the answer is the short `<answer>...</answer>` + stop token
        assert entry["scale/answer_tokens"] < entry["scale/think_tokens"] / 3
