from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")

pytest.importorskip("llamafactory")

from .helpers import TinySetup, make_tiny_setup  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinySetup:
    """A tiny local model (BPE tokenizer, 2 layers) and a 16-sample chain-of-thought dataset, built once."""
    return make_tiny_setup(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def patched():
    """LLaMA-Factory with the SCALe training patches applied in this process."""
    from scale_plugins.llamafactory import apply_training_patches

    apply_training_patches()
