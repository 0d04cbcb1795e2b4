"""The package's layering: no import cycle inside ``scale_plugins`` (imports inside functions count too), and each
layer imports only the layers below it (docs/development.md). Read from the source with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scale_plugins"
FRAMEWORKS = ("transformers", "trl", "axolotl", "llamafactory", "accelerate", "peft", "deepspeed", "datasets", "gradio")
ADAPTERS = ("trl", "axolotl", "llamafactory")
# layer -> the scale_plugins layers it may import (besides itself)
ALLOWED = {
    "core": set(),
    "data": set(),
    "rewards": set(),
    # the offline BPE tokenizer is trained on the bundled texts; the internals guard names the tested versions
    "hf": {"core", "data", "versions"},
    "versions": set(),  # the tested version ranges and the adapters' start-up warning: standard library only
    "testing": {"core", "hf", "data"},
    **{adapter: {"core", "hf", "data", "rewards", "versions"} for adapter in ADAPTERS},
    "tools": {"core", "hf", "data", "rewards", "versions", *ADAPTERS},  # never `testing`: what a command needs is in hf
    "__init__": set(),
}
# The shipped code: everything but the test utilities. None of it imports `scale_plugins.testing`, not even inside a
# function (every command runs without the `testing` extra, and test code stays out of what trains).
SHIPPED_LAYERS = set(ALLOWED) - {"testing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The scale_plugins modules ``name`` imports, anywhere in the file; ``from pkg import sub`` counts as ``sub``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
    return {m for m in found if m in known and m != name}


def third_party_of(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return "__init__"
    return "tools" if parts[1] == "__main__" else parts[1]  # ``python -m scale_plugins`` is the command line


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan). A package's ``__init__`` importing its own
    submodules is how packages re-export, not a cycle: those edges are left out."""
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_the_package():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"p": {"p.x"}, "p.x": {"q"}, "q": set()}) == []


def test_each_layer_imports_only_the_layers_below():
    problems = []
    for name, targets in graph().items():
        for target in targets:
            if layer(target) != layer(name) and layer(target) not in ALLOWED[layer(name)]:
                problems.append(f"{name} imports {target}")
    assert problems == []


def test_no_shipped_module_imports_testing():
    """The commands (tools), the adapters, ``hf`` and the rest never import the test utilities: the builders they
    need (``bpe_tokenizer``, ``qwen_tokenizer``, ``tiny_causal_lm``, ``cpu_training_args``) live in ``hf``, and
    ``scale_plugins.testing`` re-exports them."""
    importers = {
        name
        for name, targets in graph().items()
        if layer(name) in SHIPPED_LAYERS and any(layer(t) == "testing" for t in targets)
    }
    assert importers == set()


def test_testing_re_exports_every_public_name_of_its_modules():
    """``from scale_plugins.testing import X`` works for every public name of the package's modules and of the ``hf``
    builders it re-exports, and ``__all__`` lists exactly those."""
    import importlib

    package = importlib.import_module("scale_plugins.testing")
    sources = [n for n in modules() if n.startswith("scale_plugins.testing.")]
    sources += ["scale_plugins.hf.offline_tokenizers", "scale_plugins.hf.tiny_model", "scale_plugins.hf.args"]
    offered = {}
    for source in sources:
        module = importlib.import_module(source)
        offered.update({name: getattr(module, name) for name in module.__all__})
    assert sorted(package.__all__) == sorted(offered)
    for name, value in offered.items():
        assert getattr(package, name) is value, name


@pytest.mark.parametrize("name", sorted(n for n in modules() if layer(n) in ("core", "data", "rewards", "versions")))
def test_the_core_imports_no_framework(name):
    assert not third_party_of(modules()[name]) & set(FRAMEWORKS), name


def test_an_adapter_never_imports_another():
    for name, targets in graph().items():
        if layer(name) in ADAPTERS:
            assert not {layer(t) for t in targets} & (set(ADAPTERS) - {layer(name)}), name


def test_every_module_sits_in_a_known_layer():
    """A new top-level module (e.g. a command dropped beside the layers) fails here until it has a place."""
    assert {layer(name) for name in modules()} - set(ALLOWED) == set()


def test_hf_silences_no_type_error():
    """``hf`` is type-checked strictly in ``make lint`` (mypy.ini) with nothing silenced: no ``# type: ignore``."""
    silenced = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted((PACKAGE / "hf").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "# type: ignore" in line
    ]
    assert silenced == []
