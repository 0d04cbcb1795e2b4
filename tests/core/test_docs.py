from pathlib import Path

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
