"""The tested version ranges (scale_plugins.versions): the extras declare exactly them, and each adapter warns once,
naming them, outside them (the adapters' own tests check that each one calls it at start-up)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from scale_plugins import versions
from scale_plugins.versions import ADAPTERS, TESTED, WARNED_ENV, range_spec, version_warning, warn_if_untested

ROOT = Path(__file__).resolve().parents[1]


def extras() -> dict[str, dict[str, SpecifierSet]]:
    """extra -> package -> its specifier, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for extra, requirements in project["optional-dependencies"].items():
        found[extra] = {(r := Requirement(line)).name: r.specifier for line in requirements}
    return found


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_host_extra_declares_the_tested_ranges_and_no_pin(adapter):
    declared = extras()[adapter]
    assert adapter in declared
    for package, spec in declared.items():
        if package in TESTED:
            assert spec == SpecifierSet(range_spec(package)), (adapter, package, str(spec))
            assert not any(s.operator in ("==", "===") for s in spec), (adapter, package)
    assert declared["torch"] == SpecifierSet(range_spec("torch"))


def test_the_deepspeed_extra_declares_its_tested_range():
    assert extras()["deepspeed"]["deepspeed"] == SpecifierSet(range_spec("deepspeed"))


def test_this_environment_is_inside_the_tested_ranges():
    """Every lane runs inside the ranges (and the lanes together reach both ends: docs/development.md)."""
    for package in TESTED:
        version = versions.installed_version(package)
        if version is not None:
            assert versions.is_tested(package, version), (package, version, range_spec(package))


@pytest.mark.parametrize(
    ("package", "version", "inside"),
    [
        ("torch", "2.13.0+cpu", True),  # a local build label does not matter
        ("torch", "2.14.1", False),
        ("torch", "2.12.1", False),
        ("trl", "0.24.0", True),
        ("trl", "1.16.0", True),
        ("trl", "0.23.1", False),
        ("trl", "1.17.0rc1", False),  # a pre-release of the first untested version is outside (as pip reads `<`)
        ("transformers", "5.23.0", True),
        ("transformers", "5.24.0", False),
        ("axolotl", "0.19.0", True),
        ("axolotl", "0.20.0", False),
        ("llamafactory", "0.9.5", True),
        ("llamafactory", "0.9.4", False),
        ("llamafactory", "not-a-version", False),
    ],
)
def test_is_tested(package, version, inside):
    assert versions.is_tested(package, version) is inside


@pytest.fixture
def fresh(monkeypatch):
    """No warning given yet in this process or by a parent; not a worker."""
    monkeypatch.setattr(versions, "_warned", set())
    monkeypatch.setenv(WARNED_ENV, "")  # the warning sets it: monkeypatch removes it again afterwards
    monkeypatch.delenv("RANK", raising=False)


def installed(monkeypatch, **overrides: str) -> None:
    """Every checked package at the low end of its range, except ``overrides``."""
    table = {package: low for package, (low, _) in TESTED.items()} | overrides
    monkeypatch.setattr(versions, "installed_version", table.get)


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_outside_the_range_one_warning_names_the_tested_range(fresh, monkeypatch, adapter):
    installed(monkeypatch, **{adapter: "99.0"})
    given = []
    message = warn_if_untested(adapter, given.append)
    assert given == [message]
    assert f"{adapter} {range_spec(adapter)}" in message and f"installed: {adapter} 99.0," in message
    assert f"torch {range_spec('torch')}" in message
    assert warn_if_untested(adapter, given.append) is None and len(given) == 1  # once


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_inside_the_range_no_warning(fresh, monkeypatch, adapter):
    installed(monkeypatch)
    given = []
    assert warn_if_untested(adapter, given.append) is None and given == []
    installed(monkeypatch, **{adapter: TESTED[adapter][1]})  # the first untested version
    assert warn_if_untested(adapter, given.append) is not None and len(given) == 1


def test_torch_outside_its_range_is_named(fresh, monkeypatch):
    installed(monkeypatch, torch="2.14.1")
    message = version_warning("trl")
    assert "installed: torch 2.14.1," in message and "pip install 'torch>=2.13,<2.14'" in message


def test_workers_and_started_processes_stay_quiet(fresh, monkeypatch):
    """Only the first process of a launch warns: not a worker of rank > 0, not a process its launcher started."""
    installed(monkeypatch, trl="99.0")
    given = []
    assert warn_if_untested("trl", given.append, environ={"RANK": "1"}) is None
    assert warn_if_untested("trl", given.append, environ={WARNED_ENV: "1"}) is None
    environ = {"RANK": "0"}
    assert warn_if_untested("trl", given.append, environ=environ) is not None
    assert environ[WARNED_ENV] == "1" and len(given) == 1  # what the processes it starts inherit


def test_an_explicit_version_wins_over_the_metadata(fresh, monkeypatch):
    """LLaMA-Factory reports its own version (what its launcher prints): that one is checked."""
    installed(monkeypatch)
    assert version_warning("llamafactory", {"llamafactory": "0.9.4"}) is not None
    assert version_warning("llamafactory", {"llamafactory": None}) is None  # unknown: read from the metadata
