"""The building blocks of the study runner (:mod:`.study`, :mod:`.train`): greedy generation, held-out segment CE,
timing, the GRPO stage, the device and precision checks, completions files, the progress of a run and the plotting
backend."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("scale_plugins")

# -- progress inside a run ------------------------------------------------------------------------------------

#: where the run in progress says what it is doing (:func:`reporting_progress`); none: nowhere
_PROGRESS: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("progress", default=None)


@contextlib.contextmanager
def reporting_progress(sink: Callable[[str], None]) -> Iterator[None]:
    """Within the block, the phases of a run (``SFT step 40/96``, ``held-out 100/200``, ...) go to ``sink``: a run
    of a study is tens of minutes on a CPU, and its progress bar counts runs. What reports only reads the trainer's
    state, so a run trains and scores the same with or without it."""
    token = _PROGRESS.set(sink)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress(text: str) -> None:
    """Say what the run in progress is doing (:func:`reporting_progress`); nothing outside such a block."""
    sink = _PROGRESS.get()
    if sink is not None:
        sink(text)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def progress_callback(phase: str) -> Any:
    """A ``TrainerCallback`` that reports ``<phase> step i/N`` with the time so far and a linear estimate of the rest
    at each optimizer step (:func:`progress`)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.t0 = time.perf_counter()
            progress(f"{phase} step 0/{state.max_steps}")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            spent = time.perf_counter() - self.t0
            left = spent / max(1, state.global_step) * (state.max_steps - state.global_step)
            progress(f"{phase} step {state.global_step}/{state.max_steps} ({_minutes(spent)}, ~{_minutes(left)} left)")

    return _Progress()


def segment_ce(model: Any, tokenizer: Any, samples: list[dict[str, Any]], batch_size: int = 64) -> dict[str, float]:
    """Teacher-forced cross-entropy of the gold completions, pooled over the think and the answer tokens.

    The segments are the ones SCALe trains on (the core's tagger, default tags): think = ``<think>`` through
    ``</think>``; answer = the rest of the assistant turn (``<answer>`` tags, the number, end of turn).

    The per-token CE comes from inside the LM head (:func:`scale_plugins.hf.head.per_token_loss`, the fused head
    SCALe trains with): no ``[B, T, V]`` logits. From the logits, a batch of 50 held-out samples of about 250 tokens
    needed two 2.5 GB tensors with SmolLM2's 49,152-token vocabulary (a study worker's peak near 9 GB) and would
    need two 13 GB ones with Gemma 3's 262,144. A model the fused head cannot serve (a LoRA on ``lm_head``, a
    quantized head) falls back to the logits, with the reason logged.
    """
    import torch

    from ...core import ScaleOptions, SegmentTagger, TokenWeights
    from ...hf.head import per_token_loss
    from ..inspect import encode_sample

    # the closer with the trace, as in every run made while that was the default: the CE of runs under either
    # default compares (the closer's few tokens would otherwise move between the two means)
    tagger = SegmentTagger.from_tokenizer(tokenizer, ScaleOptions(think_close_segment="think"))
    totals = torch.zeros(3, dtype=torch.float64)
    counts = torch.zeros(3, dtype=torch.float64)

    def fallback(name: str, reason: str) -> None:
        logger.warning("held-out segment CE: %s", reason)

    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            encoded = [
                through_eos(*encode_sample(tokenizer, s), tokenizer.eos_token_id) for s in samples[i : i + batch_size]
            ]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in encoded])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in encoded])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in encoded])
            segments = tagger.tag(labels, shift=True).segment_ids
            unit = (segments > 0).float()
            inputs = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device), "labels": labels}
            ce = per_token_loss(model, inputs, TokenWeights(unit, unit), on_fallback=fallback).ce.double().cpu()
            for seg in (1, 2):
                chosen = segments == seg
                totals[seg] += ce[chosen].sum()
                counts[seg] += chosen.sum()
    return {
        "think_ce": float(totals[1] / counts[1]) if counts[1] else float("nan"),
        "answer_ce": float(totals[2] / counts[2]) if counts[2] else float("nan"),
    }


@functools.cache
def on_cuda() -> bool:
    """Whether the study trains and generates on a CUDA GPU (``SCALE_PLUGINS_DEVICE=cpu`` keeps it on the CPU)."""
    import torch

    return torch.cuda.is_available() and os.environ.get("SCALE_PLUGINS_DEVICE", "").lower() != "cpu"


#: the environment variable that fixes the study's precision (``fp32`` or ``bf16``) whatever the machine; set by
#: ``scale-plugins study --precision`` so that its family processes inherit it
PRECISION_ENV = "SCALE_PLUGINS_PRECISION"


def forced_precision() -> str | None:
    """The precision :data:`PRECISION_ENV` fixes (``fp32`` or ``bf16``), ``None`` where it is unset or ``auto``. A
    results file holds one precision (paired runs must not differ in it): a study resumed on a machine whose own
    choice differs (e.g. one with native bf16 after runs made on an AVX2 CPU in fp32) keeps the file's with it."""
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("fp32", "bf16"):
        raise ValueError(f"{PRECISION_ENV}={value!r}: expected fp32, bf16 or auto")
    return value


@functools.cache
def machine() -> dict[str, str]:
    """What a run was computed on, beyond device and precision: the processor's model name (a GPU's, else the
    CPU's) and the torch version. Runs of one results file may come from several machines of a kind (sessions on
    different CPUs); float32 kernels differ between CPU models in the last bits, so this says which runs shared one."""
    import platform

    import torch

    name = ""
    if on_cuda():
        name = torch.cuda.get_device_name()
    else:
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        name = name or platform.processor() or platform.machine()
    return {"processor": name, "torch_version": str(torch.__version__)}


@functools.cache
def bf16_is_fast() -> bool:
    """bf16 on a CUDA GPU; on a CPU only where a bf16 matmul is measured faster than float32 (CPUs without native
    bf16, e.g. AVX2-only ones, emulate it and train about 10x slower than in float32)."""
    import torch

    if on_cuda():
        return True

    def seconds(dtype: Any) -> float:
        a, b = torch.randn(384, 384, dtype=dtype), torch.randn(384, 384, dtype=dtype)
        a @ b
        t0 = time.perf_counter()
        for _ in range(8):
            a @ b
        return time.perf_counter() - t0

    return min(seconds(torch.bfloat16) for _ in range(3)) < 0.8 * min(seconds(torch.float32) for _ in range(3))


def through_eos(ids: list[int], labels: list[int], eos: int) -> tuple[list[int], list[int]]:
    """Cut after the last end-of-turn token: the template's newline after it is not trained (assistant-only loss)."""
    end = max((i for i, t in enumerate(ids) if t == eos), default=len(ids) - 1) + 1
    return ids[:end], labels[:end]


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots written")
        return None
    return plt


# -- generation and evaluation --------------------------------------------------------------------------------


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict]] | list[str],
    max_new_tokens: int,
    batch_size: int,
    dtype: Any = None,
) -> list[str]:
    """Greedy, batched (left padding) completions of chat prompts (through the chat template) or of plain text
    prompts (as they are, with the tokenizer's special tokens such as BOS); ``dtype``: run a copy of the model in it
    (bfloat16 is 2-3x faster than float32 on a CPU with AVX512-BF16)."""
    return [text for text, _ in generate_marked(model, tokenizer, prompts, max_new_tokens, batch_size, dtype)]


def generate_marked(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict]] | list[str],
    max_new_tokens: int,
    batch_size: int,
    dtype: Any = None,
    phase: str = "generating",
) -> list[tuple[str, bool]]:
    """:func:`generate`, each completion with whether the generation limit cut it (``max_new_tokens`` generated and
    no end-of-sequence token among them): a trace cut there never reaches its closer, which is not the same failure
    as a model that answers without closing the trace. Reports ``<phase> i/N`` after each batch (:func:`progress`)."""
    import torch

    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "left"
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    model.eval()
    plain = all(isinstance(p, str) for p in prompts)
    texts = [p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
             for p in prompts]  # fmt: skip
    eos = tok.eos_token_id
    stops = torch.tensor(eos if isinstance(eos, list) else [] if eos is None else [eos])
    out: list[tuple[str, bool]] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=plain)
            enc = enc.to(model.device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
                use_cache=True,
            )
            new = gen[:, enc["input_ids"].shape[1] :].cpu()
            # a row that stopped early ends in EOS and then padding; a row cut at the limit holds no EOS at all
            cut = [len(row) >= max_new_tokens and not bool(torch.isin(row, stops).any()) for row in new]
            out += zip(tok.batch_decode(new, skip_special_tokens=True), cut, strict=True)
            progress(f"{phase} {len(out)}/{len(texts)}")
    return out


def think_part(text: str) -> str:
    """The think part of a completion: through ``</think>``; without one, up to ``<answer>`` (or everything)."""
    close = text.find("</think>")
    return text[: close + len("</think>")] if close >= 0 else text.split("<answer>", 1)[0]


def write_completions(path: Path, samples: list[dict[str, Any]], completions: list[str]) -> None:
    """Every held-out completion beside its question and gold answer, so the scores can be recomputed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s, c in zip(samples, completions):
            f.write(json.dumps({"question": s["question"], "solution": s["solution"], "completion": c}) + "\n")


def timed_train(trainer: Any, phase: str = "training") -> tuple[float, list[dict]]:
    """``trainer.train()`` without the console printer / progress bar, its steps reported as ``<phase> step i/N``
    (:func:`progress`); (wall seconds, log_history)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # the results come back in log_history; keep the console readable
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress_callback(phase))
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0, list(trainer.state.log_history)


def grpo_train(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], size: Any, training_args: dict[str, Any], **trainer: Any
) -> tuple[Any, float, list[dict]]:
    """TRL's ``GRPOTrainer`` (no vLLM, beta 0, constant rate) with :func:`~scale_plugins.rewards.format_reward` +
    :func:`~scale_plugins.rewards.accuracy_reward` on ``rows`` (``prompt``, ``solution``), sized by ``size``'s
    ``grpo_*`` / ``num_generations`` / ``max_new_tokens`` fields; ``trainer``: more GRPOTrainer arguments (e.g.
    ``peft_config``). Returns (trained model, wall seconds, log_history)."""
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from ...rewards import accuracy_reward, format_reward

    config = GRPOConfig(
        max_steps=size.grpo_steps,
        per_device_train_batch_size=size.grpo_prompts_per_step * size.num_generations,
        num_generations=size.num_generations,
        max_completion_length=size.max_new_tokens,
        learning_rate=size.grpo_learning_rate,
        lr_scheduler_type="constant",
        beta=0.0,
        temperature=1.0,
        use_vllm=False,
        logging_steps=1,
        log_completions=False,
        **training_args,
    )
    grpo = GRPOTrainer(
        model=model,
        reward_funcs=[format_reward, accuracy_reward],
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        **trainer,
    )
    elapsed, history = timed_train(grpo, "GRPO")
    return grpo.model, elapsed, history


# -- statistics and metadata ----------------------------------------------------------------------------------


def quiet_libraries(threads: int) -> None:
    """Torch threads, offline, no progress bars or library chatter: the run prints its own progress."""
    import datasets
    import torch
    import transformers

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, threads))
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logger.setLevel(logging.WARNING)


# -- plots ----------------------------------------------------------------------------------------------------
