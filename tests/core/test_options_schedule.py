from __future__ import annotations

import math

import pytest

from scale_plugins.core import (
    ExtraSegment,
    ScaleConfigError,
    ScaleOptions,
    answer_weight,
    option_fields,
    segment_weights,
)


def test_defaults_follow_method():
    o = ScaleOptions()
    assert (o.think_open, o.think_close) == ("<think>", "</think>")
    assert (o.schedule, o.answer_weight_start, o.answer_weight_end, o.normalization) == ("cosine", 0.1, 0.9, "sample")
    assert o.segment_names == ("think", "answer")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"schedule": "cosin"},
            "schedule: 'cosin' is not allowed; choose one of ['cosine', 'linear', 'constant', 'step']",
        ),
        ({"normalization": "tokens"}, "normalization: 'tokens'"),
        ({"answer_weight_start": 1.5}, "answer_weight_start: 1.5 is out of range"),
        ({"answer_weight_end": "high"}, "answer_weight_end: must be a number"),
        ({"think_open": ""}, "think_open: must be a non-empty string"),
        ({"think_open": "<t>", "think_close": "<t>"}, "must differ"),
        ({"on_missing_think": "panic"}, "on_missing_think"),
        ({"ignore_index": "x"}, "ignore_index"),
        ({"extra_segments": [{"name": "think", "open": "<a>", "close": "</a>"}]}, "reserved"),
        ({"extra_segments": [{"name": "p", "open": "<a>", "close": "</a>", "colour": 1}]}, "unknown field"),
        ({"extra_segments": ["p:<a>"]}, "must look like"),
        ({"extra_segments": ["p:<a>:</a>:heavy"]}, "extra_segments: 'p:<a>:</a>:heavy': the weights must be numbers"),
        ({"extra_segments": [{"name": "p", "open": "<a>", "close": "</a>", "weight": [1]}]}, "extra_segments[p]"),
        ({"extra_segments": [3]}, "extra_segments: each entry must be a mapping or a string"),
        ({"think_close_segment": "own", "close_weight": 1.5}, "close_weight: 1.5 is out of range"),
        ({"close_weight": 0.2}, "close_weight/think_close_segment: close_weight=0.2 weighs the closing tag's own"),
        ({"think_close_segment": "answer", "close_weight": 0.0}, "exists only with think_close_segment 'own'"),
        ({"extra_segments": [{"name": "close", "open": "<a>", "close": "</a>"}]}, "reserved"),
    ],
)
def test_invalid_options_name_the_key(kwargs, needle):
    with pytest.raises(ScaleConfigError, match=None) as err:
        ScaleOptions(**kwargs)
    assert needle in str(err.value)


def test_the_closers_own_segment_is_last_and_weighs_close_weight_at_every_step():
    extra = ExtraSegment("perception", "<p>", "</p>", 0.2, 0.4)
    own = ScaleOptions(think_close_segment="own", close_weight=0.3, extra_segments=(extra,))
    assert own.segment_names == ("think", "answer", "perception", "close")
    for step in (0, 4, 9):
        think, answer, perception, close = segment_weights(step, 10, own)
        assert close == 0.3 and math.isclose(think + answer, 1.0)
    assert segment_weights(0, 10, own)[:3] == pytest.approx((0.9, 0.1, 0.2))
    assert len(segment_weights(0, 10, ScaleOptions(think_close_segment="answer"))) == 2


def test_from_dict_with_prefix_rejects_unknown_keys():
    o = ScaleOptions.from_dict({"scale_schedule": "linear", "other": 1}, prefix="scale_")
    assert o.schedule == "linear"
    with pytest.raises(ScaleConfigError, match="scale_shedule: unknown SCALe option"):
        ScaleOptions.from_dict({"scale_shedule": "linear"}, prefix="scale_")
    assert ScaleOptions.from_dict(o.to_dict("scale_"), prefix="scale_") == o


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scale_answer_weight_start": 1.5}, "scale_answer_weight_start: 1.5 is out of range; allowed: 0.0 to 1.0"),
        ({"scale_think_open": "<t>", "scale_think_close": "<t>"}, "scale_think_open/scale_think_close: the two tags"),
        ({"scale_schedule": "cosin"}, "scale_schedule: 'cosin' is not allowed"),
        ({"scale_extra_segments": ["p:<a>:</a>:x"]}, "scale_extra_segments: 'p:<a>:</a>:x': the weights"),
        ({"scale_extra_segments": [{"name": "p", "open": "<a>", "close": "<a>"}]}, "scale_extra_segments[p]: 'open'"),
    ],
)
def test_from_dict_errors_name_the_keys_as_the_host_writes_them(values, message):
    with pytest.raises(ScaleConfigError) as err:
        ScaleOptions.from_dict(values, prefix="scale_")
    assert str(err.value).startswith(message)


def test_with_prefix_leaves_other_messages_alone():
    assert str(ScaleConfigError("x: bad").with_prefix("")) == "x: bad"
    assert str(ScaleConfigError("scale_x: bad").with_prefix("scale_")) == "scale_x: bad"  # already the host's key
    assert str(ScaleConfigError("no key here").with_prefix("scale_")) == "no key here"
    assert str(ScaleConfigError("a/b: bad: worse").with_prefix("p_")) == "p_a/p_b: bad: worse"


def test_extra_segments_parse_from_yaml_and_cli_forms():
    a = ScaleOptions(
        extra_segments=[{"name": "perception", "open": "<perception>", "close": "</perception>", "weight": 0.3}]
    )
    b = ScaleOptions(extra_segments=["perception:<perception>:</perception>:0.3"])
    assert a == b
    assert a.extra_segments[0] == ExtraSegment("perception", "<perception>", "</perception>", 0.3, 0.3)
    assert a.segment_names == ("think", "answer", "perception")


def test_every_option_is_documented():
    for f in option_fields():
        assert len(f.help) > 20, f.name


def test_option_kinds_follow_the_annotations_not_the_names():
    """What a host mirrors (type, list-ness, its own default, bounds) agrees with ScaleOptions' annotations and
    validation, read here independently of option_fields."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(ScaleOptions)
    defaults = ScaleOptions()
    for opt in option_fields():
        hint = hints[opt.name]
        expected = list if typing.get_origin(hint) is tuple else hint
        assert opt.type is expected, opt.name
        assert opt.is_list == (expected is list) == (opt.entry_syntax is not None), opt.name
        assert opt.host_default == (None if opt.is_list else getattr(defaults, opt.name)), opt.name
        if opt.bounds is not None:
            lo, hi = opt.bounds
            context = dict([opt.requires]) if opt.requires else {}
            ScaleOptions(**context, **{opt.name: lo}), ScaleOptions(**context, **{opt.name: hi})
            for bad in (lo - 0.01, hi + 0.01):
                with pytest.raises(ScaleConfigError, match=opt.name):
                    ScaleOptions(**context, **{opt.name: bad})
    assert [o.name for o in option_fields() if o.is_list] == ["extra_segments"]
    bounded = {"answer_weight_start", "answer_weight_end", "step_at", "close_weight"}
    assert {o.name for o in option_fields() if o.bounds} == bounded
    assert {o.name: o.requires for o in option_fields() if o.requires} == {
        "close_weight": ("think_close_segment", "own")
    }
    assert [f.name for f in dataclasses.fields(ScaleOptions)] == [o.name for o in option_fields()]


def test_an_option_of_a_kind_no_host_can_mirror_fails_where_it_is_defined():
    from scale_plugins.core.options import _opt

    with pytest.raises(TypeError, match="kind 'bool'"):
        _opt(True, "a switch")
    with pytest.raises(TypeError, match="kind 'tuple'"):
        _opt((), "a list without its kind")
    with pytest.raises(TypeError, match="default to a tuple"):
        _opt([], "a list with a mutable default", kind="list")
    with pytest.raises(TypeError, match="default to a tuple"):
        _opt("x", "a string declared as a list", kind="list")


def test_values_from_form_controls():
    fields = {o.name: o for o in option_fields()}
    segments = fields["extra_segments"]
    assert segments.from_ui("a:<a>:</a>:0.2\n\n  b:<b>:</b>  \n") == ["a:<a>:</a>:0.2", "b:<b>:</b>"]
    assert segments.from_ui(" \n ") is None and segments.from_ui(None) is None
    index = fields["ignore_index"].from_ui(-100.0)
    assert index == -100 and type(index) is int
    assert fields["answer_weight_end"].from_ui("0.7") == 0.7
    assert fields["step_at"].from_ui("") is None
    assert fields["schedule"].from_ui("linear") == "linear"


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "step"])
def test_schedules_endpoints_and_monotonic(schedule):
    o = ScaleOptions(schedule=schedule)
    ws = [answer_weight(s, 100, o) for s in range(101)]
    assert math.isclose(ws[0], 0.1)
    assert math.isclose(ws[-1], 0.1 if schedule == "constant" else 0.9)
    assert all(b >= a - 1e-12 for a, b in zip(ws, ws[1:]))
    for s in range(0, 101, 7):
        think, answer = segment_weights(s, 100, o)
        assert math.isclose(think + answer, 1.0)


def test_cosine_against_its_formula_first_and_last_step():
    """Step k of max_steps trains at p = k / (max_steps - 1): the last optimizer step uses the end weight.
    (A resumed run gets the same weights: tests/contract.py, ScaleContract.test_resume_continues_exactly, run by every host.)"""
    o = ScaleOptions()
    # 10 optimizer steps, global_step 0..9: the first at 0.1, the last at exactly 0.9 (not 0.880)
    got = [answer_weight(k, 10, o) for k in range(10)]
    expected = [0.9 - 0.8 * 0.5 * (1 + math.cos(math.pi * k / 9)) for k in range(10)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] == pytest.approx(0.1) and got[-1] == pytest.approx(0.9)
    assert answer_weight(9, 10, ScaleOptions(schedule="linear")) == pytest.approx(0.9)
    assert math.isclose(answer_weight(50, 101, o), 0.5)
    assert answer_weight(500, 100, o) == pytest.approx(0.9)  # past the end: clamped
    assert answer_weight(0, 1, o) == pytest.approx(0.9)  # a one-step run is its last step


def test_step_schedule_and_bad_max_steps():
    o = ScaleOptions(schedule="step", step_at=0.25)
    assert answer_weight(24, 100, o) == 0.1 and answer_weight(25, 100, o) == 0.9
    with pytest.raises(ScaleConfigError, match="max_steps"):
        answer_weight(1, 0, o)
