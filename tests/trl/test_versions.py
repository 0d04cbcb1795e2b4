"""ScaleSFTTrainer says at start-up, once, when TRL, transformers or torch is outside the tested ranges
(scale_plugins.versions; the ranges and the message: tests/test_versions.py)."""

from __future__ import annotations

import logging

import pytest

from scale_plugins import versions
from scale_plugins.testing import bpe_tokenizer
from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

from . import helpers


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(versions, "_warned", set())
    monkeypatch.setenv(versions.WARNED_ENV, "")  # the warning sets it: monkeypatch removes it again afterwards
    monkeypatch.delenv("RANK", raising=False)


def build(tmp_path):
    tokenizer = bpe_tokenizer()
    return ScaleSFTTrainer(
        model=helpers.model(tokenizer),
        args=helpers.config(ScaleSFTConfig, tmp_path),
        train_dataset=helpers.dataset(4),
        processing_class=tokenizer,
    )


def warnings_of(caplog) -> list[str]:
    # each record once: where LLaMA-Factory's patches are applied in the same process (its env runs these tests too),
    # the same record is also handed to LLaMA-Factory's logger, and caplog sees it twice
    records = {id(r): r for r in caplog.records}.values()
    return [r.getMessage() for r in records if r.levelno == logging.WARNING and "is tested with" in r.getMessage()]


def test_an_untested_trl_is_named_once_at_start_up(fresh, monkeypatch, caplog, tmp_path):
    real = versions.installed_version
    monkeypatch.setattr(versions, "installed_version", lambda p: "1.17.0" if p == "trl" else real(p))
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        build(tmp_path / "a")
        build(tmp_path / "b")
    [message] = warnings_of(caplog)
    assert message.startswith("scale-plugins (TRL) is tested with trl >=0.24,<1.17, transformers >=5.6,<5.24")
    assert "installed: trl 1.17.0," in message


def test_the_tested_versions_start_quietly(fresh, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="scale_plugins"):
        build(tmp_path)
    assert warnings_of(caplog) == []
