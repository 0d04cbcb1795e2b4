"""ScaleSFTConfig's statically declared scale_* fields equal the core's option list, attribute by attribute."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from scale_plugins.core import OPTION_KEYS, PREFIX, ScaleOptions
from scale_plugins.trl import ScaleSFTConfig

# What a YAML / command line gives each option's field (extra_segments: a list of mappings or 'name:<o>:</c>' strings)
FIELD_TYPES = {"str": str, "float": float, "int": int, "tuple[ExtraSegment, ...]": list[str] | None}


def test_prefix_and_keys_are_declared_once():
    assert PREFIX == "scale_"
    assert OPTION_KEYS == tuple(PREFIX + f.name for f in dataclasses.fields(ScaleOptions))


def test_config_fields_equal_the_core_options():
    hints = typing.get_type_hints(ScaleSFTConfig)
    ours = [f for f in dataclasses.fields(ScaleSFTConfig) if f.name.startswith(PREFIX)]
    core = dataclasses.fields(ScaleOptions)
    assert [f.name for f in ours] == [PREFIX + f.name for f in core]
    for field, option in zip(ours, core):
        assert hints[field.name] == FIELD_TYPES[str(option.type)], field.name
        want_default = None if option.name == "extra_segments" else option.default
        assert field.default == want_default, field.name
        assert field.metadata.get("choices") == (
            list(option.metadata["choices"]) if "choices" in option.metadata else None
        )
        assert option.metadata["help"] in field.metadata["help"], field.name
    # the SFTConfig fields keep their places: the first positional argument is still output_dir
    assert dataclasses.fields(ScaleSFTConfig)[0].name == "output_dir"


def test_config_docstring_names_every_option_with_its_default():
    """The docstring editors show for ScaleSFTConfig is a hand-written mirror of the core: it must not drift."""
    from scale_plugins.core import option_fields

    lines = (ScaleSFTConfig.__doc__ or "").splitlines()
    for opt in option_fields():
        key = PREFIX + opt.name
        (line,) = [line for line in lines if re.search(rf"\b{key}\b", line)]
        if opt.is_list:
            assert "(none)" in line, key
        elif isinstance(opt.default, str):
            assert f'``"{opt.default}"``' in line, key
        else:
            assert str(opt.default) in line, key
        for choice in opt.choices or ():
            assert f"``{choice}``" in line or f'``"{choice}"``' in line, (key, choice)


def test_positional_output_dir_and_scale_options(tmp_path):
    config = ScaleSFTConfig(str(tmp_path), use_cpu=True, bf16=False, report_to=[], scale_answer_weight_end=0.7)
    assert config.output_dir == str(tmp_path)
    assert config.scale_options() == ScaleOptions(answer_weight_end=0.7)
    with pytest.raises(ValueError, match="scale_normalization"):
        ScaleSFTConfig(str(tmp_path), use_cpu=True, bf16=False, scale_normalization="tokens")
