"""One rule, for every host, for config keys that are meant as SCALe options but are not one.

A host that drops keys its schema does not know (Axolotl) would otherwise train with the default instead of what the
user wrote; one that rejects them (LLaMA-Factory's parser) would say less than we can. A key is *meant as a SCALe
option* (:func:`meant_as_option`) when

* it starts with the prefix in any spelling (``scale_``, ``Scale_``, ``scale-``), or with a host switch
  (``use_scale_loss``);
* it is a near-miss of the prefix followed by an option name, exact or nearly so (``scal_schedule``,
  ``scaleschedule``, ``sclae_answer_weight_end``); unrelated keys that merely end like an option (``lr_schedule``)
  are not: the part before the option name must itself look like the prefix;
* it is a SCALe-specific option's own name without the prefix (``answer_weight_end``, ``think_close_segment``;
  not the generic ``schedule`` or ``normalization``), a key that no host reads.

A host reports each such key that is not a field of its own schema with :func:`unknown_key_message`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .options import OPTION_KEYS, PREFIX, ScaleOptions

OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ScaleOptions))
#: Option names that say SCALe by themselves (think / answer / segments): written without the prefix they are meant
#: as SCALe options; generic ones (``schedule``, ``normalization``, ``step_at``, ``ignore_index``) are left to the host.
DISTINCT_NAMES: tuple[str, ...] = tuple(n for n in OPTION_NAMES if any(w in n for w in ("think", "answer", "segment")))


def _normalized(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def meant_as_option(key: str, switches: Sequence[str] = ()) -> bool:
    """Whether ``key`` is meant as a SCALe option or switch (the module's rule)."""
    norm = _normalized(key)
    if norm.startswith(PREFIX) or norm in DISTINCT_NAMES:
        return True
    if any(norm.startswith(_normalized(s).rsplit("_", 1)[0]) for s in switches):  # use_scale_loss: use_scale*
        return True
    for cut in range(3, len(norm)):
        head, tail = norm[:cut], norm[cut:]
        if difflib.SequenceMatcher(None, head, PREFIX).ratio() < 0.8:
            continue
        if difflib.get_close_matches(tail, OPTION_NAMES, n=1, cutoff=0.85):
            return True
    return False


def unknown_option_keys(keys: Iterable[Any], known: Iterable[str], switches: Sequence[str] = ()) -> list[str]:
    """The keys meant as SCALe options or switches that are neither one nor a field of the host's schema
    (``known``: a ``scale_*`` field of the host or of another plugin stays allowed)."""
    valid = set(known) | set(OPTION_KEYS) | set(switches)
    return [k for k in keys if isinstance(k, str) and k not in valid and meant_as_option(k, switches)]


def closest_key(key: str, switches: Sequence[str] = ()) -> str | None:
    """The SCALe key ``key`` most likely means: the closest option key or switch, else the closest option name
    after a misspelled or missing prefix."""
    norm = _normalized(key)
    ours = [*switches, *OPTION_KEYS]
    if norm in DISTINCT_NAMES:
        return PREFIX + norm
    guess = difflib.get_close_matches(norm, ours, n=1, cutoff=0.6)
    if guess:
        return guess[0]
    tail = norm.split("_", 1)[-1] if "_" in norm else norm
    names = difflib.get_close_matches(tail, OPTION_NAMES, n=1, cutoff=0.6)
    return PREFIX + names[0] if names else None


def unknown_key_message(key: str, switches: Sequence[str] = ()) -> str:
    """``<key>: unknown SCALe key; did you mean `<closest>`?`` (or the list of the keys); a key without the prefix
    says the prefix is needed."""
    guess = closest_key(key, switches)
    missing_prefix = _normalized(key) in DISTINCT_NAMES
    head = f"{key}: unknown SCALe key" + (f" (SCALe options take the prefix `{PREFIX}`)" if missing_prefix else "")
    hint = f"did you mean `{guess}`?" if guess else f"the SCALe keys are: {', '.join([*switches, *OPTION_KEYS])}."
    return f"{head}; {hint}"


def options_set(values: Mapping[str, Any]) -> list[str]:
    """The SCALe option keys that ``values`` sets (not ``None``): with SCALe off, each is a mistake to report."""
    return [key for key in OPTION_KEYS if values.get(key) is not None]
