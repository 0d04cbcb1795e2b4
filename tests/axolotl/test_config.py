"""Config side of the Axolotl adapter, through Axolotl's own config loading and validation (in process).

- a good `loss: scale` config is accepted and becomes the SCALe trainer with exactly the YAML's options;
- every bad `scale_*` value, and every combination that would bypass SCALe, is rejected naming the key;
- `loss: scale` without the plugin fails loudly (the pydantic guard), never silently trains plain CE.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from scale_plugins.core import ExtraSegment, ScaleConfigError, ScaleOptions, option_fields

from .conftest import PLUGIN, axolotl_config, cot_samples, scale_keys, write_jsonl


@pytest.fixture(autouse=True)
def fresh_plugin_manager():
    """Axolotl's PluginManager is a process-wide singleton: start every test with no plugin registered."""
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    yield manager
    manager.plugins.clear()
    manager.plugins.update(saved)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "cot.jsonl", cot_samples(4))


def validate(cfg: dict[str, Any]) -> Any:
    """What `load_cfg` does to a config's keys: register the listed plugins, validate with the merged schema."""
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(cfg)
    prepare_plugins(cfg)
    return validate_config(cfg)


def rejected_keys(err: BaseException) -> list[str]:
    """The keys an error is about: pydantic's error locations, and the key our messages start with.

    (Not a substring search of the whole message: pydantic echoes the input, which contains every key.)
    """
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        keys = []
        for e in err.errors():
            keys += [str(e["loc"][0])] if e["loc"] else []
            message = e["msg"].removeprefix("Value error, ")
            keys += message.split(":", 1)[0].split("[", 1)[0].split("/")  # 'a/b: ...' is about a and b
        return keys
    return str(err).split(":", 1)[0].split("/")


def minimal(**keys: Any) -> dict[str, Any]:
    """Enough of a config for Axolotl's schema (no model needed to validate)."""
    return {
        "base_model": "unused",
        "datasets": [{"path": "unused.jsonl", "type": "chat_template"}],
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "output_dir": "unused",
        **keys,
    }


# -- a good config -----------------------------------------------------------------------------------------


NON_DEFAULT = {
    "think_open": "<reasoning>",
    "think_close": "</reasoning>",
    "think_close_segment": "own",
    "close_weight": 0.3,
    "schedule": "step",
    "answer_weight_start": 0.2,
    "answer_weight_end": 0.7,
    "step_at": 0.25,
    "normalization": "token",
    "extra_segments": [{"name": "perception", "open": "<perception>", "close": "</perception>", "weight": 0.3}],
    "empty_think": "think",
    "on_missing_think": "error",
    "ignore_index": -1,
}


def test_non_default_values_cover_every_option():
    assert set(NON_DEFAULT) == {opt.name for opt in option_fields()}
    defaults = {opt.name: opt.default for opt in option_fields()}
    assert all(NON_DEFAULT[k] != defaults[k] for k in NON_DEFAULT)


def test_good_config_loads_and_builds_the_scale_trainer_with_its_options(tiny_model_dir, data_file, tmp_path):
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault

    from scale_plugins.axolotl.trainer import ScaleAxolotlTrainer

    cfg = load_cfg(DictDefault(axolotl_config(tiny_model_dir, data_file, tmp_path, **scale_keys(**NON_DEFAULT))))
    assert cfg.loss == "scale"
    assert cfg.scale_schedule == "step" and cfg.scale_answer_weight_end == 0.7
    trainer_cls = PluginManager.get_instance().get_trainer_cls(cfg)
    assert issubclass(trainer_cls, ScaleAxolotlTrainer)
    expected = ScaleOptions(
        think_open="<reasoning>",
        think_close="</reasoning>",
        think_close_segment="own",
        close_weight=0.3,
        schedule="step",
        answer_weight_start=0.2,
        answer_weight_end=0.7,
        step_at=0.25,
        normalization="token",
        extra_segments=(ExtraSegment("perception", "<perception>", "</perception>", 0.3, 0.3),),
        empty_think="think",
        on_missing_think="error",
        ignore_index=-1,
    )
    assert trainer_cls.scale_bound_options == expected


def test_unset_options_take_the_core_defaults(tiny_model_dir, data_file, tmp_path):
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault

    cfg = load_cfg(DictDefault(axolotl_config(tiny_model_dir, data_file, tmp_path, **scale_keys())))
    assert PluginManager.get_instance().get_trainer_cls(cfg).scale_bound_options == ScaleOptions()


def test_args_model_mirrors_the_core_options():
    from scale_plugins.axolotl.args import ScaleArgs

    fields = ScaleArgs.model_fields
    assert list(fields) == ["loss"] + [f"scale_{opt.name}" for opt in option_fields()]
    for opt in option_fields():
        description = fields[f"scale_{opt.name}"].description
        assert opt.help in description
        default = list(opt.default) if isinstance(opt.default, tuple) else opt.default
        assert f"Default: {default!r}" in description
    ScaleArgs.model_json_schema()  # Axolotl's docs tooling renders the schema


def test_plugin_stays_out_of_rl_runs_and_plain_runs():
    from axolotl.utils.dict import DictDefault

    from scale_plugins.axolotl import ScalePlugin

    plugin = ScalePlugin()
    assert plugin.get_trainer_cls(DictDefault({"loss": "scale", "rl": "grpo"})) is None
    assert plugin.get_trainer_cls(DictDefault({})) is None
    assert plugin.get_trainer_cls(DictDefault({"loss": "scale"})) is not None


def test_plugin_refuses_a_trainer_that_is_not_scale():
    from axolotl.utils.dict import DictDefault

    from scale_plugins.axolotl import ScalePlugin

    with pytest.raises(ScaleConfigError, match="another plugin's get_trainer_cls"):
        ScalePlugin().post_trainer_create(DictDefault({"loss": "scale"}), object())
    ScalePlugin().post_trainer_create(DictDefault({}), object())  # not a SCALe run: nothing to check


def test_pre_model_load_passes_role_boundaries_on_as_plain_dicts_in_scale_runs_only():
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.schemas.multimodal import RoleBoundarySpec

    from scale_plugins.axolotl import ScalePlugin

    entries = [{"role": "user", "start": "[INST]", "end": "[/INST]", "include_end": False}, {"role": "assistant"}]
    cfg = DictDefault({"loss": "scale", "role_boundaries": entries})
    assert [type(e) for e in cfg.role_boundaries] == [DictDefault, DictDefault]  # as load_cfg leaves them
    ScalePlugin().pre_model_load(cfg)
    assert [type(e) for e in cfg.role_boundaries] == [dict, dict] and cfg.role_boundaries == entries

    plain_run = DictDefault({"role_boundaries": entries})
    ScalePlugin().pre_model_load(plain_run)  # not a SCALe run: left as Axolotl has it
    assert [type(e) for e in plain_run.role_boundaries] == [DictDefault, DictDefault]

    spec = RoleBoundarySpec(role="assistant", start="[/INST]")
    validated = DictDefault({"loss": "scale"})
    validated["role_boundaries"] = [spec]  # already readable by Axolotl: untouched
    ScalePlugin().pre_model_load(validated)
    assert validated.role_boundaries == [spec]
    ScalePlugin().pre_model_load(DictDefault({"loss": "scale"}))  # none declared: nothing to do


def test_trainer_needs_its_options():
    from scale_plugins.axolotl.trainer import ScaleAxolotlTrainer

    with pytest.raises(ScaleConfigError, match="needs its options"):
        ScaleAxolotlTrainer()


def test_scale_loss_sits_between_axolotl_and_transformers_trainer():
    """AxolotlTrainer.compute_loss's final super() call must land on SCALe, not on Trainer's loss."""
    from axolotl.core.trainers.base import AxolotlTrainer
    from transformers import Trainer

    from scale_plugins.axolotl.trainer import ScaleAxolotlTrainer, _ScaleLossBelowAxolotl
    from scale_plugins.hf import ScaleTrainerMixin

    mro = ScaleAxolotlTrainer.__mro__
    assert mro.index(ScaleTrainerMixin) < mro.index(AxolotlTrainer) < mro.index(_ScaleLossBelowAxolotl)
    assert mro.index(_ScaleLossBelowAxolotl) + 1 == mro.index(Trainer)
    between = mro[mro.index(AxolotlTrainer) + 1 : mro.index(_ScaleLossBelowAxolotl)]
    assert not [c for c in between if "compute_loss" in vars(c)]


# -- bad values ------------------------------------------------------------------------------------------

BAD_VALUES: dict[str, list[Any]] = {
    "think_open": ["", 123],
    "think_close": ["", ["</think>"]],
    "schedule": ["cosin", 1],
    "answer_weight_start": [1.5, -0.1, True, "abc"],
    "answer_weight_end": [2, -1.0, False],
    "step_at": [1.01, True],
    "normalization": ["mean", "Token"],
    "extra_segments": [
        [{"name": "think", "open": "<a>", "close": "</a>"}],
        [{"name": "p", "open": "<p>"}],
        [{"name": "p", "open": "<p>", "close": "</p>", "colour": "red"}],
        ["p-only"],
        [{"name": "p", "open": "<p>", "close": "</p>", "weight": -1}],
        "p:<p>:</p>",
    ],
    "empty_think": ["keep", "Think", True, 1],
    "think_close_segment": ["closer", "Answer", True, 1],
    "close_weight": [1.5, -0.1, "heavy", 0.3],  # 0.3: a weight for a segment the default 'think' does not make
    "on_missing_think": ["raise", True],
    "ignore_index": [1.5, True, "x"],
}


def test_bad_values_cover_every_option():
    assert set(BAD_VALUES) == {opt.name for opt in option_fields()}


@pytest.mark.parametrize(("name", "value"), [(name, value) for name, values in BAD_VALUES.items() for value in values])
def test_bad_value_is_rejected_naming_the_key(name, value):
    with pytest.raises(Exception) as info:
        validate(minimal(**scale_keys(**{name: value})))
    assert f"scale_{name}" in rejected_keys(info.value)


def test_minimal_scale_config_is_valid():
    cfg = validate(minimal(**scale_keys(answer_weight_end=0.8)))
    assert cfg.loss == "scale" and cfg.scale_answer_weight_end == 0.8


def test_equal_tags_are_rejected():
    with pytest.raises(Exception) as info:
        validate(minimal(**scale_keys(think_open="<t>", think_close="<t>")))
    assert rejected_keys(info.value) == ["scale_think_open", "scale_think_close"]


def test_unknown_loss_is_rejected():
    with pytest.raises(Exception) as info:
        validate(minimal(plugins=[PLUGIN], loss="scal"))
    assert "loss" in rejected_keys(info.value)


def test_scale_options_without_loss_scale_are_rejected():
    with pytest.raises(Exception, match="`loss: scale` is not"):
        validate(minimal(plugins=[PLUGIN], scale_answer_weight_end=0.8))


def test_listing_the_plugin_alone_changes_nothing():
    cfg = validate(minimal(plugins=[PLUGIN]))
    assert cfg.get("loss") is None
    assert not [key for key in cfg if key.startswith("scale_")]


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"rl": "grpo"}, "rl"),
        ({"rl": "dpo"}, "rl"),
        ({"cut_cross_entropy": True}, "cut_cross_entropy"),
        ({"liger_fused_linear_cross_entropy": True}, "liger_fused_linear_cross_entropy"),
        ({"liger_cross_entropy": True}, "liger_cross_entropy"),
        ({"chunked_cross_entropy": True}, "chunked_cross_entropy"),
        ({"use_eaft": True}, "use_eaft"),
        ({"orpo_alpha": 0.1}, "orpo_alpha"),
        ({"reward_model": True}, "reward_model"),
        ({"trainer_cls": "my.Trainer"}, "trainer_cls"),
    ],
)
def test_loss_bypassing_combinations_are_rejected(keys, named):
    with pytest.raises(Exception) as info:
        validate(minimal(**scale_keys(), **keys))
    assert "cannot be combined" in str(info.value) and f"{named}:" in str(info.value)


def test_cut_cross_entropy_plugin_is_rejected_because_it_enables_itself():
    cce = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
    cfg = {**minimal(**scale_keys()), "plugins": [PLUGIN, cce], "bf16": True}
    with pytest.raises(Exception, match="CutCrossEntropyPlugin is listed"):
        validate(cfg)


def test_liger_plugin_is_rejected_with_its_fused_linear_cross_entropy():
    liger = "axolotl.integrations.liger.LigerPlugin"
    cfg = {**minimal(**scale_keys()), "plugins": [PLUGIN, liger], "liger_fused_linear_cross_entropy": True}
    with pytest.raises(Exception, match="liger_fused_linear_cross_entropy"):
        validate(cfg)


# -- without the plugin ----------------------------------------------------------------------------------


def test_pydantic_guard_entry_point_is_installed():
    entry_points = importlib.metadata.entry_points(group="pydantic")
    assert "scale_plugins.axolotl.guard:plugin" in {ep.value for ep in entry_points}


@pytest.mark.parametrize("keys", [{"loss": "scale"}, {"scale_answer_weight_end": 0.8}])
def test_scale_without_plugin_fails_loudly_in_load_cfg(tiny_model_dir, data_file, tmp_path, keys):
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    from scale_plugins.axolotl.guard import ScalePluginNotActiveError

    with pytest.raises(ScalePluginNotActiveError) as info:
        load_cfg(DictDefault(axolotl_config(tiny_model_dir, data_file, tmp_path, **keys)))
    message = str(info.value)
    assert "silently train plain cross-entropy" in message
    assert f"plugins:\n  - {PLUGIN}" in message
    assert next(iter(keys)) in message


def test_scale_with_other_plugins_but_not_ours_fails_loudly():
    from scale_plugins.axolotl.guard import ScalePluginNotActiveError

    with pytest.raises(ScalePluginNotActiveError, match="not listed"):
        validate(minimal(plugins=["axolotl.integrations.kd.KDPlugin"], loss="scale"))


def test_listed_plugin_that_fails_to_import_fails_loudly(monkeypatch):
    """Axolotl only logs a plugin's ImportError; the guard turns it into an error."""
    from scale_plugins.axolotl.guard import ScalePluginNotActiveError

    monkeypatch.setitem(sys.modules, "scale_plugins.axolotl.plugin", None)  # `import` now raises ImportError
    with pytest.raises(ScalePluginNotActiveError, match="could not load it"):
        validate(minimal(plugins=[PLUGIN], loss="scale"))


def test_validation_with_gpu_capabilities_is_guarded_too():
    """`axolotl train` validates with AxolotlConfigWCapabilities (a subclass): the guard must see it too."""
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    from scale_plugins.axolotl.guard import ScalePluginNotActiveError

    capabilities = {"bf16": False, "fp8": False, "n_gpu": 0, "n_node": 1, "compute_capability": None}
    with pytest.raises(ScalePluginNotActiveError):
        validate_config(DictDefault(minimal(loss="scale")), capabilities=capabilities, env_capabilities={})


def test_guard_survives_axolotl_moving_its_config_model():
    """The guard matches ``AxolotlInputConfig`` by name inside the ``axolotl`` package, not by module path: a
    release that moves the class to another module keeps the guard on (it used to go quiet)."""
    import pydantic

    from scale_plugins.axolotl.guard import ScalePluginNotActiveError, plugin

    moved = type("AxolotlInputConfig", (pydantic.BaseModel,), {"__module__": "axolotl.schemas.moved_here"})
    sub = type("AxolotlConfigWCapabilities", (moved,), {"__module__": "axolotl.elsewhere"})
    lookalike = type("AxolotlInputConfig", (pydantic.BaseModel,), {"__module__": "someone_else.config"})
    for schema_type in (moved, sub):
        handler, _, _ = plugin.new_schema_validator(None, schema_type, None, None, None, None)
        with pytest.raises(ScalePluginNotActiveError):
            handler.on_enter({"loss": "scale"})
    assert plugin.new_schema_validator(None, lookalike, None, None, None, None) == (None, None, None)


def test_guard_ignores_configs_that_do_not_ask_for_scale():
    from scale_plugins.axolotl.guard import check_scale_plugin_active

    check_scale_plugin_active({"loss": None, "base_model": "x"})
    check_scale_plugin_active({"loss": "something_else"})
    with pytest.raises(ValueError, match="loss: scale"):
        check_scale_plugin_active({"loss": "SCALE"})
    check_scale_plugin_active({"scale_rewards": True}, known={"scale_rewards": object()})  # a host key, not ours
    with pytest.raises(ValueError):
        check_scale_plugin_active({"scale_rewards": True})


def test_axolotl_cli_does_not_load_cli_command_entry_points_for_train(monkeypatch):
    """Why `axolotl.cli_commands` cannot auto-activate the plugin: resolving `axolotl train` never reads that
    entry-point group (it is read only for unknown subcommands and `--help`, and even then only as metadata:
    a command's module is imported when that command runs)."""
    import click
    from axolotl.cli import plugins as cli_plugins
    from axolotl.cli.main import cli

    def fail(**kwargs: Any) -> Any:
        raise AssertionError("entry points were read")

    monkeypatch.setattr(cli_plugins, "entry_points", fail)
    with click.Context(cli) as ctx:
        command = cli.get_command(ctx, "train")
    assert command is not None and command.name == "train"
    assert cli_plugins.ENTRY_POINT_GROUP == "axolotl.cli_commands"


# -- the args model against the core's option list ---------------------------------------------------------

# Written out by hand, on purpose: a change to the core's options must show up here (and in docs/axolotl.md).
# key: (annotation without `| None`, default, choices)
EXPECTED_ARGS: dict[str, tuple[Any, Any, list[str] | None]] = {
    "scale_think_open": (str, "<think>", None),
    "scale_think_close": (str, "</think>", None),
    "scale_think_close_segment": (str, "answer", ["think", "answer", "own"]),
    "scale_close_weight": (float, 0.5, None),
    "scale_schedule": (str, "cosine", ["cosine", "linear", "constant", "step"]),
    "scale_answer_weight_start": (float, 0.1, None),
    "scale_answer_weight_end": (float, 0.9, None),
    "scale_step_at": (float, 0.5, None),
    "scale_normalization": (str, "sample", ["sample", "token"]),
    "scale_extra_segments": (list[dict[str, Any] | str], [], None),
    "scale_empty_think": (str, "ignore", ["ignore", "think"]),
    "scale_on_missing_think": (str, "warn", ["warn", "error", "ignore"]),
    "scale_ignore_index": (int, -100, None),
}


def test_args_model_fields_are_the_expected_options():
    """Names (in order), annotations, defaults and choices of the keys Axolotl's schema gets from the plugin."""
    from scale_plugins.axolotl.args import ScaleArgs

    fields = dict(ScaleArgs.model_fields)
    assert fields.pop("loss").annotation == Literal["scale"] | None
    assert list(fields) == list(EXPECTED_ARGS)
    for key, (annotation, default, choices) in EXPECTED_ARGS.items():
        field = fields[key]
        assert field.annotation == annotation | None, key
        assert field.default is None, key  # unset keys stay out of the validated config; the core applies defaults
        assert field.json_schema_extra["scale_default"] == default, key
        assert field.json_schema_extra.get("choices") == choices, key


def test_args_model_matches_the_core_dataclass_attribute_by_attribute():
    """Each ScaleOptions field against its Axolotl key, read from the dataclass itself (not from option_fields)."""
    from scale_plugins.axolotl.args import ScaleArgs

    types = {"str": str, "float": float, "int": int}
    core = dataclasses.fields(ScaleOptions)
    assert [key for key in ScaleArgs.model_fields if key != "loss"] == [f"scale_{f.name}" for f in core]
    for f in core:
        field = ScaleArgs.model_fields[f"scale_{f.name}"]
        if f.name != "extra_segments":
            assert field.annotation == types[str(f.type)] | None, f.name
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        assert field.json_schema_extra["scale_default"] == default, f.name
        choices = f.metadata.get("choices")
        assert field.json_schema_extra.get("choices") == (list(choices) if choices else None), f.name
        assert f.metadata["help"] in field.description, f.name


CHOICES = [(f.name, choice) for f in dataclasses.fields(ScaleOptions) for choice in f.metadata.get("choices") or ()]


@pytest.mark.parametrize(("name", "choice"), CHOICES)
def test_every_choice_validates_in_axolotl_and_reaches_the_options(name, choice):
    from scale_plugins.axolotl.args import scale_options_from_cfg

    cfg = validate(minimal(**scale_keys(**{name: choice})))
    assert cfg[f"scale_{name}"] == choice
    assert getattr(scale_options_from_cfg(cfg), name) == choice


def test_empty_think_defaults_to_ignore_through_axolotl():
    from scale_plugins.axolotl.args import scale_options_from_cfg

    cfg = validate(minimal(**scale_keys()))
    assert "scale_empty_think" not in cfg  # unset: the core's default applies
    assert scale_options_from_cfg(cfg).empty_think == "ignore"


# -- misspelled keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "meant"),
    [
        ("scale_schedul", "linear", "scale_schedule"),
        ("scale_answer_weight_ennd", 0.9, "scale_answer_weight_end"),
        ("scale_answer_weight", 0.9, "scale_answer_weight_end"),
        ("scale_normalisation", "token", "scale_normalization"),
        ("scale_emptythink", "think", "scale_empty_think"),
        ("Scale_Schedule", "linear", "scale_schedule"),
        ("scale-schedule", "linear", "scale_schedule"),
        # near-misses of the prefix
        ("scal_schedule", "linear", "scale_schedule"),
        ("scale_on_missing_thinks", "error", "scale_on_missing_think"),
        ("sclae_answer_weight_end", 0.9, "scale_answer_weight_end"),
        ("scaleschedule", "linear", "scale_schedule"),
        ("scale__normalization", "token", "scale_normalization"),
        # an option without its prefix: Axolotl would drop it and train with the default
        ("answer_weight_end", 0.5, "scale_answer_weight_end"),
        ("think_close_segment", "answer", "scale_think_close_segment"),
    ],
)
def test_misspelled_scale_key_is_rejected_naming_it_and_the_closest_option(key, value, meant):
    with pytest.raises(Exception) as info:
        validate(minimal(**scale_keys(), **{key: value}))
    assert rejected_keys(info.value)[-1] == key
    assert f"did you mean `{meant}`?" in str(info.value)


def test_misspelled_scale_key_is_rejected_through_load_cfg(tiny_model_dir, data_file, tmp_path):
    """The entry point of `axolotl train` (and of the tests' runs): the whole config, both misspellings named."""
    from axolotl.cli.config import load_cfg
    from axolotl.utils.dict import DictDefault

    keys = {**scale_keys(), "scale_schedul": "linear", "scale_answer_weight_ennd": 0.9}
    with pytest.raises(Exception) as info:
        load_cfg(DictDefault(axolotl_config(tiny_model_dir, data_file, tmp_path, **keys)))
    message = str(info.value)
    assert "scale_schedul: unknown SCALe key; did you mean `scale_schedule`?" in message
    assert "scale_answer_weight_ennd: unknown SCALe key; did you mean `scale_answer_weight_end`?" in message


def test_misspelled_scale_key_is_rejected_without_loss_scale_too():
    with pytest.raises(Exception, match="scale_schedul: unknown SCALe key; did you mean `scale_schedule`"):
        validate(minimal(plugins=[PLUGIN], scale_schedul="linear"))


def test_unrelated_keys_are_not_taken_for_scale_keys():
    """Axolotl's own fields (`scale_rewards` of its GRPO config lives under `trl:`), and unknown keys that only end
    like an option, are left to Axolotl."""
    from scale_plugins.axolotl.args import unknown_scale_keys

    config = {"lr_schedule": "x", "schedule": "x", "normalization": "x", "step_at": 1, "scaler": 1, "scale": 2}
    assert unknown_scale_keys(config, known=()) == []
    assert unknown_scale_keys({"scale_rewards": True}, known={"scale_rewards"}) == []
    assert unknown_scale_keys({"scale_rewards": True}, known=()) == ["scale_rewards"]
    cfg = validate(minimal(**scale_keys(), lr_schedule="cosine"))  # unknown to Axolotl: dropped by it, not by us
    assert cfg.loss == "scale" and "lr_schedule" not in cfg


# -- the plugin listed without `loss: scale` ------------------------------------------------------------


@pytest.fixture
def scale_log(caplog: pytest.LogCaptureFixture):
    """caplog for our logger (Axolotl's logging config stops `axolotl.*` records from reaching the root logger)."""
    import logging

    logger = logging.getLogger("axolotl.scale_plugins")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="axolotl.scale_plugins")
    yield caplog
    logger.removeHandler(caplog.handler)


def scale_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Our warnings, once each (a record can reach caplog's handler twice: directly and through the root logger)."""
    import logging

    records = {id(r): r for r in caplog.records if r.name == "axolotl.scale_plugins" and r.levelno >= logging.WARNING}
    return [r.getMessage() for r in records.values()]


def test_plugin_without_loss_scale_warns_that_scale_is_off(scale_log):
    cfg = validate(minimal(plugins=[PLUGIN]))
    assert cfg.get("loss") is None
    [warning] = scale_warnings(scale_log)
    assert "SCALe is off" in warning and "add `loss: scale`" in warning


def test_plugin_with_loss_scale_does_not_warn(scale_log):
    validate(minimal(**scale_keys()))
    assert scale_warnings(scale_log) == []


# -- parallelism that splits or repeats samples ------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("context_parallel_size", "once per rank"),
        ("sequence_parallel_degree", "older name of `context_parallel_size`"),
        ("tensor_parallel_size", "once per tensor-parallel rank"),
    ],
)
def test_context_and_tensor_parallelism_are_refused(key, why):
    with pytest.raises(Exception) as info:
        validate(minimal(**scale_keys(), **{key: 2}))
    message = str(info.value)
    assert "cannot be combined" in message and f"{key}: 2: " in message and why in message


@pytest.mark.parametrize("key", ["context_parallel_size", "sequence_parallel_degree", "tensor_parallel_size"])
def test_parallel_size_one_is_fine(key):
    cfg = validate(minimal(**scale_keys(), **{key: 1}))
    assert cfg.loss == "scale"


def test_docs_list_every_option():
    docs = (Path(__file__).parents[2] / "docs" / "axolotl.md").read_text()
    for opt in option_fields():
        assert f"| `scale_{opt.name}` |" in docs, opt.name


@pytest.mark.parametrize(
    ("cfg", "found"),
    [
        ({"datasets": [{"roles_to_train": ["assistant"]}]}, []),
        ({"train_on_inputs": True}, ["train_on_inputs: true"]),
        (
            {"datasets": [{"roles_to_train": ["assistant"]}, {"roles_to_train": ["user", "assistant"]}]},
            ["datasets[1].roles_to_train: ['user']"],
        ),
    ],
)
def test_supervised_prompt_settings(cfg, found):
    from scale_plugins.axolotl.args import supervised_prompt_settings

    assert supervised_prompt_settings(cfg) == found
