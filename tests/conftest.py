from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory):
    """Gemma 3 270M as a plain checkpoint, converted once per test session (about a minute on one core)."""
    from .real_model import convert_gemma3

    return convert_gemma3(tmp_path_factory)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
