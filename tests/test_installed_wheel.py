"""The checks of tests/installed_wheel.py (``make test`` runs them on the built wheel in every host lane) fail when
they should: a wheel whose metadata would move a host package, and a smoke test that imports the source tree."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

from . import installed_wheel

WHEEL = Path("/dist/scale_plugins-0.1.0-py3-none-any.whl")


def _item(name: str, version: str, url: str = "https://files.example/x.whl") -> dict:
    return {"metadata": {"name": name, "version": version}, "download_info": {"url": url}}


def test_resolution_problems_names_every_package_pip_would_move():
    ours = _item("scale-plugins", "0.1.0", "file:///dist/" + WHEEL.name)
    assert installed_wheel.resolution_problems({"install": [ours]}, WHEEL) == []
    downgrade = {"install": [ours, _item("trl", "1.9.0"), _item("Transformers", "5.6.0")]}
    assert installed_wheel.resolution_problems(downgrade, WHEEL) == [
        "pip would install trl 1.9.0",
        "pip would install Transformers 5.6.0",
    ]
    # a package the environment lacked although an installed one requires it: allowed only when named
    added = {"install": [ours, _item("torchvision", "0.28.0")]}
    assert installed_wheel.resolution_problems(added, WHEEL) == ["pip would install torchvision 0.28.0"]
    assert installed_wheel.resolution_problems(added, WHEEL, missing=["torchvision"]) == []
    elsewhere = {"install": [_item("scale_plugins", "0.1.0", "https://files.example/scale_plugins-0.1.0.tar.gz")]}
    assert "not scale_plugins-0.1.0-py3-none-any.whl" in installed_wheel.resolution_problems(elsewhere, WHEEL)[0]
    assert installed_wheel.resolution_problems({"install": []}, WHEEL) == ["pip would not install scale-plugins at all"]


def test_the_smoke_test_fails_when_scale_plugins_comes_from_the_source_tree(tmp_path):
    target = tmp_path / "site"  # where the wheel would be installed; the source tree comes first instead
    target.mkdir()
    result = installed_wheel.run_smoke("trl", target, tmp_path, pythonpath=str(installed_wheel.ROOT))
    assert result.returncode != 0
    assert "not from the installed wheel" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_pip_resolution_fails_for_a_wheel_that_would_move_the_host(tmp_path):
    """The built wheel, its metadata pinning trl to another version than this environment's: pip's real resolver
    (PyPI) would change trl, and the check says so."""
    if importlib.util.find_spec("trl") is None:
        pytest.skip("needs an environment with trl")
    from importlib.metadata import version

    _, wheel = installed_wheel.build(tmp_path / "dist")
    pin = "1.9.0" if version("trl") != "1.9.0" else "1.16.0"
    bad = tmp_path / "bad" / wheel.name
    bad.parent.mkdir()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".dist-info/METADATA"):
                data = data.replace(b"Requires-Dist: torch>=2.4\n", f"Requires-Dist: trl=={pin}\n".encode(), 1)
                assert f"trl=={pin}".encode() in data
            dst.writestr(info, data)
    installed_wheel.check_resolution("trl", wheel, tmp_path)  # the wheel as built: nothing moves
    with pytest.raises(AssertionError, match=f"pip would install trl {pin}"):
        installed_wheel.check_resolution("trl", bad, tmp_path)
