"""The one definition of every SCALe option.

Every adapter (TRL config, Axolotl args model, LLaMA-Factory hparams) derives its
fields from :class:`ScaleOptions` via :func:`option_fields`, so a name means the
same thing in every host. Each field's ``metadata["help"]`` is its documentation;
``docs/options.md`` is generated from the same table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEDULES = ("cosine", "linear", "constant", "step")
NORMALIZATIONS = ("sample", "token")
MISSING_TAG_POLICIES = ("warn", "error", "ignore")
EMPTY_THINK_POLICIES = ("ignore", "think")
CLOSE_TAG_SEGMENTS = ("think", "answer", "own")
#: The name of the closing tag's own segment (``think_close_segment="own"``), last in segment order.
CLOSE_SEGMENT_NAME = "close"
RESERVED_SEGMENT_NAMES = ("ignored", "think", "answer", CLOSE_SEGMENT_NAME)


class ScaleConfigError(ValueError):
    """An invalid SCALe option. The message is ``"<key>[/<key>...]: what is wrong and what is allowed"``.

    :meth:`ScaleOptions.from_dict` names the keys as the host spells them (``scale_think_open/scale_think_close:
    ...``); :meth:`with_prefix` does that for any message of this form.
    """

    def with_prefix(self, prefix: str) -> ScaleConfigError:
        """The same error naming ``prefix + key`` for each key of its head (``a/b: ...`` -> ``pa/pb: ...``)."""
        message = str(self)
        keys, sep, rest = message.partition(": ")
        if not prefix or not sep or " " in keys or keys.startswith(prefix):
            return ScaleConfigError(message)
        return ScaleConfigError("/".join(prefix + key for key in keys.split("/")) + sep + rest)


@dataclass(frozen=True)
class ExtraSegment:
    """A user-declared tagged segment, e.g. ``<perception>...</perception>``.

    Its tokens are taken out of whatever segment encloses them (think or answer)
    and averaged separately, with a weight that follows the same schedule shape as
    the answer weight, from ``weight_start`` to ``weight_end``.
    """

    name: str
    open_tag: str
    close_tag: str
    weight_start: float = 0.5
    weight_end: float = 0.5

    @classmethod
    def parse(cls, spec: Any, key: str = "extra_segments") -> ExtraSegment:
        """Build from a mapping (YAML) or a ``name:open:close[:weight[:weight_end]]`` string (CLI)."""
        if isinstance(spec, ExtraSegment):
            return spec
        if isinstance(spec, str):
            parts = spec.split(":")
            if len(parts) not in (3, 4, 5):
                raise ScaleConfigError(
                    f"{key}: {spec!r} must look like 'name:<open>:</close>[:weight_start[:weight_end]]'"
                )
            try:
                weights = [float(p) for p in parts[3:]]
            except ValueError:
                raise ScaleConfigError(f"{key}: {spec!r}: the weights must be numbers") from None
            start = weights[0] if weights else 0.5
            end = weights[1] if len(weights) > 1 else start
            spec = {"name": parts[0], "open": parts[1], "close": parts[2], "weight_start": start, "weight_end": end}
        if not isinstance(spec, Mapping):
            raise ScaleConfigError(f"{key}: each entry must be a mapping or a string, got {type(spec).__name__}")
        allowed = {"name", "open", "close", "open_tag", "close_tag", "weight", "weight_start", "weight_end"}
        unknown = set(spec) - allowed
        if unknown:
            raise ScaleConfigError(f"{key}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        try:
            name = spec["name"]
            open_tag = spec.get("open", spec.get("open_tag"))
            close_tag = spec.get("close", spec.get("close_tag"))
        except KeyError as err:
            raise ScaleConfigError(f"{key}: every entry needs 'name', 'open' and 'close'") from err
        weight = spec.get("weight", 0.5)
        try:
            start = float(spec.get("weight_start", weight))
            end = float(spec.get("weight_end", spec.get("weight", start)))
        except (TypeError, ValueError):
            raise ScaleConfigError(f"{key}[{name}]: the weights must be numbers, got {dict(spec)!r}") from None
        return cls(
            str(name), str(open_tag) if open_tag is not None else "", str(close_tag) if close_tag else "", start, end
        )


#: The kinds of option value: a scalar of that type, or ``list`` (entries given as mappings or as text, one per line
#: in the web UI and one per argument on a command line, in the option's ``entry_syntax``).
KINDS: dict[str, type] = {"str": str, "float": float, "int": int, "list": list}


def _opt(default: Any, help: str, *, kind: str | None = None, **extra: Any) -> Any:
    """One option's dataclass field. ``kind`` is the scalar type of ``default`` unless given (``"list"`` for a
    tuple default); a kind the hosts cannot mirror is an error here, at import, not a guess in an adapter."""
    kind = kind or type(default).__name__
    if kind not in KINDS:
        raise TypeError(f"SCALe option kind {kind!r}: declare one of {sorted(KINDS)}")
    if (kind == "list") != isinstance(default, tuple):
        raise TypeError(f"SCALe option of kind {kind!r} with default {default!r}: list options default to a tuple")
    return field(default=default, metadata={"help": help, "kind": kind, **extra})


@dataclass(frozen=True)
class ScaleOptions:
    """SCALe options (docs/concepts.md); every one is configurable.

    Hosts expose each field with the prefix ``scale_`` (``scale_answer_weight_start``
    and so on); the names and meanings are identical everywhere.
    """

    think_open: str = _opt(
        "<think>", "Opening tag of the reasoning segment (a string; may be one special token or several BPE pieces)."
    )
    think_close: str = _opt(
        "</think>",
        "Closing tag of the reasoning segment. A closer without an opener in the supervised text (templates that put the opener in the prompt) makes the supervised text before it (since the previous think block) think.",
    )
    think_close_segment: str = _opt(
        "answer",
        "Which segment the closing tag's tokens belong to: 'think' (the closer ends the trace and weighs like a trace token, 1/|think| of the think weight under sample normalization), 'answer' (the decision to end the trace is trained with the answer's weight and averaged with the answer tokens) or 'own' (a segment of its own, 'close', averaged like the others and weighted by close_weight at every step, added to the think and answer terms; docs/concepts.md). Empty think blocks follow empty_think either way.",
        choices=CLOSE_TAG_SEGMENTS,
    )
    close_weight: float = _opt(
        0.5,
        "With think_close_segment 'own': the constant weight of the closing tag's segment (its per-sample mean CE, like a segment), added to the loss on top of think and answer (whose weights stay 1 - w_answer and w_answer). Setting it to anything but its default with another think_close_segment is an error.",
        minimum=0.0,
        maximum=1.0,
        requires=("think_close_segment", "own"),
        requires_why="weighs the closing tag's own segment",
    )
    schedule: str = _opt(
        "cosine",
        "How the answer weight moves over training progress p = step / (max_steps - 1): 0 at the first optimizer step, 1 at the last (docs/concepts.md).",
        choices=SCHEDULES,
    )
    answer_weight_start: float = _opt(
        0.1,
        "Answer weight at p = 0, the first optimizer step (think weight = 1 - answer weight).",
        minimum=0.0,
        maximum=1.0,
    )
    answer_weight_end: float = _opt(
        0.9,
        "Answer weight at p = 1, the last optimizer step (think weight = 1 - answer weight).",
        minimum=0.0,
        maximum=1.0,
    )
    step_at: float = _opt(
        0.5,
        "For schedule 'step': progress at which the answer weight jumps from start to end.",
        minimum=0.0,
        maximum=1.0,
    )
    normalization: str = _opt(
        "sample",
        "'sample': per-sample segment means, averaged over the samples having that segment in the optimizer step (length-independent; the SCALe default). 'token': one weighted mean over all supervised tokens of the step (equal weights give exactly the stock loss).",
        choices=NORMALIZATIONS,
    )
    extra_segments: tuple[ExtraSegment, ...] = _opt(
        (),
        "Extra tagged segments, each {name, open, close, weight_start, weight_end} (or 'name:<open>:</close>:w0:w1'); they take their tokens from the enclosing segment.",
        kind="list",
        entry_syntax="name:<open>:</close>:weight_start:weight_end",
    )
    empty_think: str = _opt(
        "ignore",
        "Think blocks with nothing but whitespace between the tags (e.g. '<think>\\n\\n</think>\\n\\n' before a plain answer, as Qwen3 templates add): 'ignore' leaves their tokens out of the loss (counted in scale/empty_think_blocks), 'think' trains them as think (each then weighs as much as a full trace under sample normalization).",
        choices=EMPTY_THINK_POLICIES,
    )
    on_missing_think: str = _opt(
        "warn",
        "What to do when a whole optimizer step has supervised tokens but no think tokens: 'warn' (once, then counted in scale/steps_without_think), 'error', or 'ignore'.",
        choices=MISSING_TAG_POLICIES,
    )
    ignore_index: int = _opt(-100, "Label value of tokens that are not supervised.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_segments", tuple(ExtraSegment.parse(e) for e in (self.extra_segments or ())))
        self.validate()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ScaleConfigError(f"{f.name}: {value!r} is not allowed; choose one of {list(choices)}")
            if "minimum" in f.metadata:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ScaleConfigError(f"{f.name}: must be a number, got {value!r}")
                lo, hi = f.metadata["minimum"], f.metadata["maximum"]
                if not lo <= value <= hi:
                    raise ScaleConfigError(f"{f.name}: {value!r} is out of range; allowed: {lo} to {hi}")
        for key in ("think_open", "think_close"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ScaleConfigError(f"{key}: must be a non-empty string")
        if self.think_open == self.think_close:
            raise ScaleConfigError("think_open/think_close: the two tags must differ")
        for f in dataclasses.fields(self):  # an option that only means something under another one's value
            if "requires" in f.metadata and getattr(self, f.name) != f.default:
                key, needed = f.metadata["requires"]
                if getattr(self, key) != needed:
                    raise ScaleConfigError(
                        f"{f.name}/{key}: {f.name}={getattr(self, f.name)!r} {f.metadata['requires_why']}, which "
                        f"exists only with {key} {needed!r} (it is {getattr(self, key)!r})"
                    )
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise ScaleConfigError(f"ignore_index: must be an integer, got {self.ignore_index!r}")
        names = set(RESERVED_SEGMENT_NAMES)
        for extra in self.extra_segments:
            if not extra.name or extra.name in names:
                raise ScaleConfigError(
                    f"extra_segments: name {extra.name!r} is empty, reserved or duplicated; reserved: {list(RESERVED_SEGMENT_NAMES)}"
                )
            names.add(extra.name)
            if not extra.open_tag or not extra.close_tag or extra.open_tag == extra.close_tag:
                raise ScaleConfigError(
                    f"extra_segments[{extra.name}]: 'open' and 'close' must be two different non-empty tags"
                )
            for w in (extra.weight_start, extra.weight_end):
                if not w >= 0.0:
                    raise ScaleConfigError(f"extra_segments[{extra.name}]: weights must be >= 0, got {w!r}")

    @property
    def segment_names(self) -> tuple[str, ...]:
        """Names of the weighted segments, in segment-id order (id = index + 1; 0 is ignored)."""
        own = (CLOSE_SEGMENT_NAME,) if self.think_close_segment == "own" else ()
        return ("think", "answer", *(e.name for e in self.extra_segments), *own)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], prefix: str = "") -> ScaleOptions:
        """Build from a mapping, reading ``prefix + name`` keys (``None`` = the default); unknown prefixed keys are
        errors. Every :class:`ScaleConfigError` names the keys as written there, ``prefix`` included."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            if name not in known:
                raise ScaleConfigError(f"{key}: unknown SCALe option; known: {sorted(prefix + k for k in known)}")
            if value is not None:
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except ScaleConfigError as err:
            raise err.with_prefix(prefix) from None

    def to_dict(self, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra_segments":
                value = [dataclasses.asdict(e) for e in value]
            out[prefix + f.name] = value
        return out


@dataclass(frozen=True)
class OptionField:
    """One option as an adapter sees it: everything a host needs to build a config field, a flag or a control of
    its own, so that no adapter special-cases an option by its name."""

    name: str
    #: ``str``, ``float``, ``int``, or ``list`` (a list of entries: :attr:`entry_syntax` as text)
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None
    #: (minimum, maximum) of a number, both inclusive, where the core bounds it
    bounds: tuple[float, float] | None = None
    #: How one entry of a list option is written as text (a command-line argument, a line of a text box)
    entry_syntax: str | None = None
    #: ``(option, value)``: this option may leave its default only when that option has that value
    requires: tuple[str, Any] | None = None

    @property
    def is_list(self) -> bool:
        return self.type is list

    @property
    def host_default(self) -> Any:
        """The default a host's own field declares: the core's default, ``None`` for a list option (a host field
        cannot share a mutable default; ``None`` means "the core's default", an empty list)."""
        return None if self.is_list else self.default

    def from_ui(self, value: Any) -> Any:
        """A value from a form control (a text box, a number field): a list option takes one entry per non-empty
        line of its text (``None`` when there is none); a number becomes the option's type; ``None`` and an empty
        number field stay ``None`` (the core's default)."""
        if value is None:
            return None
        if self.is_list:
            return [line.strip() for line in str(value).splitlines() if line.strip()] or None
        if self.type in (int, float) and str(value).strip() == "":
            return None
        return self.type(value)


def option_fields() -> Iterator[OptionField]:
    """The SCALe options in definition order, for adapters to mirror as config fields."""
    for f in dataclasses.fields(ScaleOptions):
        meta = f.metadata
        bounds = (meta["minimum"], meta["maximum"]) if "minimum" in meta else None
        yield OptionField(
            f.name,
            KINDS[meta["kind"]],
            f.default,
            meta["help"],
            meta.get("choices"),
            bounds,
            meta.get("entry_syntax"),
            meta.get("requires"),
        )


#: The prefix every host puts before an option's name (``scale_answer_weight_end``); declared once, here.
PREFIX = "scale_"
#: Every option as a host spells it, in definition order.
OPTION_KEYS: tuple[str, ...] = tuple(PREFIX + f.name for f in dataclasses.fields(ScaleOptions))


def options_markdown(prefix: str = PREFIX) -> str:
    """The options reference table (docs/options.md embeds it; a test keeps the two equal)."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for opt in option_fields():
        allowed = ", ".join(f"`{c}`" for c in opt.choices) if opt.choices else ""
        default = "none" if opt.default in ((), None) else f"`{opt.default!r}`"
        help_text = opt.help.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{prefix}{opt.name}` | {opt.type.__name__} | {default} | {allowed} | {help_text} |")
    return "\n".join(lines) + "\n"
