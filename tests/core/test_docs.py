import re
from pathlib import Path

import pytest

from scale_plugins.core.options import option_fields, options_markdown

DOCS = Path(__file__).parents[2] / "docs"


def test_options_reference_is_current():
    assert options_markdown() in (DOCS / "options.md").read_text(), "regenerate with `scale-plugins options`"


def test_every_option_has_a_documented_key():
    text = (DOCS / "options.md").read_text()
    for opt in option_fields():
        assert f"`scale_{opt.name}`" in text


def test_importing_the_package_imports_no_framework():
    import subprocess
    import sys

    code = "import sys, scale_plugins, scale_plugins.core; print(sorted(m for m in ('transformers', 'trl', 'axolotl', 'llamafactory', 'accelerate', 'deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


ROOT = DOCS.parent
PATH_IN_TEXT = re.compile(r"(?<![\w/.<-])((?:recipes|docs|tests|scale_plugins|\.ci)/[\w./-]*[\w/])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_repository_paths_named_in_the_docs_exist():
    """README.md and docs/*.md name files of this repository (recipes, tests, modules): each one is there."""
    missing = []
    for md in _markdown_files():
        for match in PATH_IN_TEXT.finditer(md.read_text()):
            path = match.group(1).split("::")[0].rstrip(".")
            if not (ROOT / path).exists():
                missing.append(f"{md.name}: {path}")
    assert not missing, missing


def test_relative_links_in_the_docs_resolve():
    broken = []
    for md in _markdown_files():
        for match in LINK.finditer(md.read_text()):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.name}: {target}")
    assert not broken, broken


ANCHOR_LINK = re.compile(r"\]\(([^)#\s]*)#([^)\s]+)\)")


def _github_anchors(md: Path) -> set[str]:
    """The anchors GitHub gives a file's headings: the text without markup, lower case, punctuation dropped, spaces
    as hyphens; a repeated heading gets -1, -2, ... Lines inside code fences are not headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in md.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"#{1,6} (.+)", line)
        if fenced or not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_anchor_links_in_the_docs_name_a_heading():
    """`[...](#part-1-...)` and `[...](file.md#section)`: a renamed heading breaks the links to it silently on GitHub
    (the page opens at the top); here each anchor must be one the target file's headings give."""
    broken = []
    for md in _markdown_files():
        for match in ANCHOR_LINK.finditer(md.read_text()):
            target = md if not match.group(1) else md.parent / match.group(1)
            if target.suffix != ".md" or "://" in match.group(1):
                continue
            if match.group(2) not in _github_anchors(target):
                broken.append(f"{md.name}: {match.group(1)}#{match.group(2)}")
    assert not broken, broken


def _plain(text: str) -> str:
    """Markdown cell text without the formatting that may differ from the help string (quotes, backticks, escapes)."""
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("\\|", "|")
    return " ".join(re.sub(r"[`'\\]", "", text).split())


@pytest.mark.parametrize("doc", ["axolotl.md", "llamafactory.md"])
def test_host_option_tables_state_the_core_help(doc):
    """The hosts' option tables are written by hand (a host adds its own notes): each row states the option's help
    from the core, so a help text that changes (e.g. the schedule's p = step / (max_steps - 1)) fails here."""
    text = (DOCS / doc).read_text()
    stale = []
    for opt in option_fields():
        row = re.search(rf"^\| `scale_{opt.name}` \|(.*)$", text, re.MULTILINE)
        assert row, f"docs/{doc} has no row for scale_{opt.name}"
        if _plain(opt.help) not in _plain(row.group(1)):
            stale.append(opt.name)
    assert not stale, f"docs/{doc}: these rows do not state the core's help text: {stale}"
