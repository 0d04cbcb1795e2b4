"""``scale-plugins recipes --dest DIR``: the recipes, DeepSpeed configs and ``dataset_info.json`` outside a clone.

The wheel ships the repository's ``recipes/`` folder as ``scale_plugins/recipes`` (setup.py's ``build_py``); an
editable install or a clone reads the repository's own folder. The command writes it to ``DIR/recipes`` with the
bundled synthetic chain-of-thought data beside it (``DIR/recipes/data/synthetic_cot.jsonl``), so the recipes run
from ``DIR`` exactly as the docs run them from the repository root: every relative path in them
(``deepspeed: recipes/deepspeed/zero2.json``, the SmolLM2 recipes' data, LLaMA-Factory's ``dataset_info.json``)
resolves there.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

#: Where the bundled data sits in the repository, as the recipes name it, and where the written copy puts it.
DATA_IN_REPO = "scale_plugins/data/synthetic_cot.jsonl"
DATA_WRITTEN = "recipes/data/synthetic_cot.jsonl"
TEXT_SUFFIXES = (".yaml", ".yml", ".json", ".md", ".txt")


class RecipesNotFoundError(FileNotFoundError):
    """Neither the packaged recipes (a wheel) nor the repository's folder (a clone, editable install) is there."""


def recipes_source() -> Traversable:
    """The recipes folder: packaged in the wheel, else the repository's (editable install or a clone)."""
    packaged = resources.files("scale_plugins") / "recipes"
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "recipes"
    if repo.is_dir():
        return repo
    raise RecipesNotFoundError(
        "no recipes in this installation of scale-plugins (neither scale_plugins/recipes in the package nor a "
        "repository's recipes/ folder beside it); reinstall from a wheel or an sdist of scale-plugins"
    )


def _files(folder: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    out = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith((".", "__")):
            continue
        rel = f"{prefix}{entry.name}"
        out.extend(_files(entry, rel + "/") if entry.is_dir() else [(rel, entry)])
    return out


def recipe_files() -> dict[str, bytes]:
    """Every file :func:`write_recipes` writes, relative to the destination, with its content."""
    files = {}
    for rel, entry in _files(recipes_source()):
        data = entry.read_bytes()
        if rel.endswith(TEXT_SUFFIXES):
            data = data.replace(DATA_IN_REPO.encode(), DATA_WRITTEN.encode())
        files[f"recipes/{rel}"] = data
    files[DATA_WRITTEN] = (resources.files("scale_plugins") / "data" / "synthetic_cot.jsonl").read_bytes()
    return files


def write_recipes(dest: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the recipes under ``dest/recipes``; refuses to replace a file that differs unless ``overwrite``."""
    dest = Path(dest)
    files = recipe_files()
    clashes = [rel for rel, data in files.items() if (dest / rel).exists() and (dest / rel).read_bytes() != data]
    if clashes and not overwrite:
        raise FileExistsError(
            f"{len(clashes)} file(s) under {dest} differ from the recipes of this scale-plugins (e.g. {clashes[0]}); "
            "pass --overwrite to replace them, or choose another --dest"
        )
    written = []
    for rel, data in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dest", required=True, help="the folder to write into (it gets recipes/...; run the recipes from it)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files under --dest that differ")


def main(args: argparse.Namespace) -> int:
    try:
        written = write_recipes(args.dest, overwrite=args.overwrite)
    except (RecipesNotFoundError, FileExistsError) as error:
        print(f"scale-plugins recipes: error: {error}", file=sys.stderr)
        return 2
    dest = Path(args.dest)
    print(f"wrote {len(written)} files under {dest / 'recipes'}:")
    for path in written:
        print(f"  {path.relative_to(dest)}")
    print(
        f"Run the recipes from {dest} (their paths are relative to it), e.g.\n"
        f"  cd {dest} && axolotl train recipes/axolotl/smollm2_135m_scale_sft.yaml"
    )
    return 0
