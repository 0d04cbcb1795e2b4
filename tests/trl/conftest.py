from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest.importorskip("trl")


@pytest.fixture(scope="session")
def tokenizer():
    from scale_plugins.testing import bpe_tokenizer

    return bpe_tokenizer()
