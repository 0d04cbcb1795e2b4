"""``scale-plugins recipes --dest DIR``: the recipes outside a clone, from the editable install and from the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from scale_plugins.tools.cli import main
from scale_plugins.tools.recipes import DATA_IN_REPO, DATA_WRITTEN, recipe_files

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _repo_recipes() -> dict[str, bytes]:
    return {
        f"recipes/{path.relative_to(RECIPES)}": path.read_bytes()
        for path in sorted(RECIPES.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def _relative_paths(dest: Path) -> list[tuple[Path, str]]:
    """(file, path it names) for every local path a written recipe needs: DeepSpeed configs, data files."""
    named = []
    for path in sorted((dest / "recipes").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if isinstance(config.get("deepspeed"), str):
            named.append((dest, config["deepspeed"]))
        for dataset in config.get("datasets") or []:
            if not dataset["path"].startswith("path/to/"):  # the placeholders of the GPU recipes
                named.append((dest, dataset["path"]))
    for path in sorted((dest / "recipes").rglob("dataset_info.json")):
        for entry in json.loads(path.read_text()).values():
            named.append((path.parent, entry["file_name"]))
    return named


def test_recipes_command_writes_every_recipe_runnable_from_dest(tmp_path, capsys):
    dest = tmp_path / "mine"
    assert main(["recipes", "--dest", str(dest)]) == 0
    assert "Run the recipes from" in capsys.readouterr().out
    written = {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}
    repo = _repo_recipes()
    assert set(written) == set(repo) | {DATA_WRITTEN}
    for rel, data in repo.items():  # the same files, the bundled data's path changed where named
        assert written[rel] == data.replace(DATA_IN_REPO.encode(), DATA_WRITTEN.encode()), rel
    assert written[DATA_WRITTEN] == (ROOT / DATA_IN_REPO).read_bytes()
    assert not [rel for rel, data in written.items() if DATA_IN_REPO.encode() in data]
    named = _relative_paths(dest)
    assert {name for _, name in named} >= {"recipes/deepspeed/zero2.json", "recipes/deepspeed/zero3.json"}
    assert any(name.endswith(DATA_WRITTEN) for _, name in named)  # the SmolLM2 recipes' data
    missing = [f"{base}/{name}" for base, name in named if not (base / name).is_file()]
    assert not missing, missing


def test_recipes_command_never_replaces_a_changed_file_silently(tmp_path, capsys):
    dest = tmp_path / "mine"
    assert main(["recipes", "--dest", str(dest)]) == 0
    assert main(["recipes", "--dest", str(dest)]) == 0  # the same files again: nothing to lose
    mine = dest / "recipes" / "deepspeed" / "zero2.json"
    mine.write_text('{"my": "edit"}')
    assert main(["recipes", "--dest", str(dest)]) == 2
    assert "differ from the recipes" in capsys.readouterr().err and mine.read_text() == '{"my": "edit"}'
    assert main(["recipes", "--dest", str(dest), "--overwrite"]) == 0
    assert mine.read_bytes() == (RECIPES / "deepspeed" / "zero2.json").read_bytes()


def test_recipe_files_come_from_the_repository_in_an_editable_install():
    assert {rel: data for rel, data in recipe_files().items() if rel != DATA_WRITTEN} == {
        rel: data.replace(DATA_IN_REPO.encode(), DATA_WRITTEN.encode()) for rel, data in _repo_recipes().items()
    }


@pytest.mark.slow
def test_the_wheel_ships_the_recipes_and_the_command_writes_them(tmp_path):
    """Build the wheel from the source files (no -e), run ``scale-plugins recipes`` from it, outside the clone."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(
            f"building without isolation needs setuptools >= 68 (pyproject.toml); found {setuptools.__version__}"
        )
    source = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=source,
        check=True,
    )
    (wheel,) = wheels.glob("scale_plugins-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            "recipes/" + name.removeprefix("scale_plugins/recipes/"): archive.read(name)
            for name in archive.namelist()
            if name.startswith("scale_plugins/recipes/")
        }
        archive.extractall(tmp_path / "installed")
    assert shipped == _repo_recipes()
    dest = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    code = "import scale_plugins, sys; print(scale_plugins.__file__); sys.exit(__import__('scale_plugins.tools.cli').tools.cli.main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "recipes", "--dest", str(dest)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(tmp_path / "installed")), result.stdout  # the wheel's copy ran, not the clone
    assert (dest / "recipes" / "llamafactory" / "data" / "dataset_info.json").is_file()
    assert (dest / DATA_WRITTEN).read_bytes() == (ROOT / DATA_IN_REPO).read_bytes()
