"""The web UI's help texts in five languages against the one English source, the core's option help.

Translations are written by hand (``scale_plugins/llamafactory/locales.py``, one table); what a test can compare
is every checkable fact of the English help: formulas (``p = step / (max_steps - 1)``), quoted values (``'sample'``),
metric names (``scale/...``), identifiers (``max_steps``, ``empty_think``), docs paths and segment formats. When the
core's help changes one of them, the stale translations fail here, naming the option, the language and the fact.
"""

from __future__ import annotations

import re

import pytest

from scale_plugins.llamafactory.locales import LANGUAGES, locales, translated_options, ui_options

FACT = re.compile(
    r"p = (?:step / \(max_steps - 1\)|[01])"  # the schedule's progress and its ends
    r"|\w+:<\w+>:</\w+>:\w+:\w+"  # segment formats (name:<open>:</close>:w0:w1)
    r"|'[^'\s]+'"  # quoted values ('sample', 'ignore', ...; not the apostrophe of "answer's")
    r"|scale/\w+"  # metric names
    r"|docs/\w+\.md"  # docs the help points to
    r"|\b[a-z]+(?:_[a-z]+)+\b",  # identifiers (max_steps, empty_think, weight_start, ...)
    re.ASCII,  # "scale/empty_think_blocks에": a Korean particle is not part of the name
)


def facts(text: str) -> set[str]:
    found = set(FACT.findall(text))
    # identifiers inside a longer fact (scale/steps_without_think, a segment format, a formula) are not separate facts
    return {f for f in found if not any(f != other and f in other for other in found)}


def _cases() -> list[tuple[str, str]]:
    return [(opt.name, lang) for opt in ui_options() for lang in LANGUAGES if lang != "en"]


def test_every_option_is_translated():
    assert {opt.name for opt in ui_options()} <= translated_options(), "translate every new option"


@pytest.mark.parametrize(("name", "lang"), _cases())
def test_translated_help_states_the_facts_of_the_english_help(name, lang):
    import html

    entries = locales()[f"scale_{name}"]
    english = html.unescape(entries["en"]["info"])
    translated = html.unescape(entries[lang]["info"])
    missing = sorted(facts(english) - facts(translated))
    assert not missing, f"scale_{name} [{lang}] lacks {missing} of the English help: {english!r}"


def test_the_schedule_help_gives_the_progress_the_code_uses():
    """The example that was wrong: four languages said p = step / max_steps."""
    from scale_plugins.core.schedule import progress

    assert progress(9, 10) == 1.0  # step 9 of 0..9: p = 9 / (10 - 1)
    for lang in LANGUAGES:
        info = locales()["scale_schedule"][lang]["info"]
        assert "p = step / (max_steps - 1)" in info and "p = step / max_steps" not in info, lang


def test_facts_finds_what_a_stale_translation_lacks():
    english = "progress p = step / (max_steps - 1); 'ignore' (counted in scale/empty_think_blocks), docs/concepts.md"
    assert facts(english) == {
        "p = step / (max_steps - 1)",
        "'ignore'",
        "scale/empty_think_blocks",
        "docs/concepts.md",
    }
    assert facts(english) - facts("прогресс p = step / max_steps; 'ignore' (scale/empty_think_blocks)") == {
        "p = step / (max_steps - 1)",
        "docs/concepts.md",
    }
