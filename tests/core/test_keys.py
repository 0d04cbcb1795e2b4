"""The one rule for keys meant as SCALe options (scale_plugins/core/keys.py), shared by every host."""

import pytest

from scale_plugins.core.keys import closest_key, meant_as_option, options_set, unknown_key_message, unknown_option_keys


@pytest.mark.parametrize(
    "key",
    ["scale_schedul", "Scale_Schedule", "scale-schedule", "scal_schedule", "sclae_answer_weight_end", "scaleschedule",
     "answer_weight_end", "think_close_segment", "Empty_Think", "use_scale_los"],
)  # fmt: skip
def test_meant_as_option(key):
    assert meant_as_option(key, ("use_scale_loss",))


@pytest.mark.parametrize(
    "key",
    [
        "lr_scheduler",
        "learning_rate",
        "answer",
        "schedule_free",
        "use_cache",
        "loss",
        "schedule",
        "normalization",
        "step_at",
        "ignore_index",
    ],
)
def test_other_keys_are_not(key):
    assert not meant_as_option(key, ("use_scale_loss",))


def test_unknown_keys_skip_the_valid_and_the_hosts_own():
    keys = ["scale_schedule", "scale_schedul", "answer_weight_end", "scale_rewards", "lr_scheduler", 3]
    assert unknown_option_keys(keys, known={"scale_rewards"}) == ["scale_schedul", "answer_weight_end"]
    assert unknown_option_keys(["use_scale_loss", "use_scale_los"], (), ("use_scale_loss",)) == ["use_scale_los"]


def test_messages_name_the_closest_key_or_the_missing_prefix():
    assert closest_key("scale_answer_weight_ennd") == "scale_answer_weight_end"
    assert closest_key("sclae_answer_weight_end") == "scale_answer_weight_end"
    assert unknown_key_message("answer_weight_end") == (
        "answer_weight_end: unknown SCALe key (SCALe options take the prefix `scale_`); "
        "did you mean `scale_answer_weight_end`?"
    )
    assert unknown_key_message("use_scale_los", ("use_scale_loss",)).endswith("did you mean `use_scale_loss`?")
    assert "the SCALe keys are: scale_think_open" in unknown_key_message("scale_zzzzzzzzzzzzzzzzzzzz")


def test_options_set():
    assert options_set({"scale_schedule": "linear", "scale_normalization": None, "lr": 1}) == ["scale_schedule"]
