"""The plugin says at start-up (``register``, through Axolotl's own plugin loading), once, when Axolotl, transformers
or torch is outside the tested ranges (scale_plugins.versions; the ranges and the message: tests/test_versions.py)."""

from __future__ import annotations

import pytest

from scale_plugins import versions

from .conftest import axolotl_config, scale_keys


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    from axolotl.integrations.base import PluginManager

    monkeypatch.setattr(versions, "_warned", set())
    monkeypatch.setenv(versions.WARNED_ENV, "")  # the warning sets it: monkeypatch removes it again afterwards
    monkeypatch.delenv("RANK", raising=False)
    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    yield
    manager.plugins.clear()
    manager.plugins.update(saved)


def start(tmp_path, monkeypatch) -> list[str]:
    """Axolotl's plugin loading (what ``axolotl train`` does first) for a SCALe config, twice; the warnings logged."""
    from axolotl.utils.config import prepare_plugins
    from axolotl.utils.dict import DictDefault

    from scale_plugins.axolotl import plugin

    given: list[str] = []
    monkeypatch.setattr(plugin.LOG, "warning", lambda message, *args, **kwargs: given.append(message % args))
    for _ in range(2):
        prepare_plugins(DictDefault(axolotl_config(tmp_path, tmp_path / "d.jsonl", tmp_path, **scale_keys())))
    return [m for m in given if "is tested with" in m]


def test_an_untested_axolotl_is_named_once_at_start_up(fresh, monkeypatch, tmp_path):
    real = versions.installed_version
    monkeypatch.setattr(versions, "installed_version", lambda p: "0.20.0" if p == "axolotl" else real(p))
    [message] = start(tmp_path, monkeypatch)
    assert message.startswith("scale-plugins (Axolotl) is tested with axolotl >=0.19,<0.20, transformers")
    assert "installed: axolotl 0.20.0," in message


def test_the_tested_versions_start_quietly(fresh, monkeypatch, tmp_path):
    assert start(tmp_path, monkeypatch) == []
