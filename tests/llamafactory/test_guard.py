"""The version guard and the torchrun command rewrite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from scale_plugins.llamafactory.patch import (
    _TRAINING_NAMES,
    _TRAINING_USES,
    _WEBUI_NAMES,
    _WEBUI_USES,
    SUPPORTED_VERSION,
    WORKER_MODULE,
    UnsupportedLlamaFactoryError,
    check_llamafactory,
    rewrite_torchrun_command,
)

from .helpers import train_config, write_yaml


def test_supported_version_is_installed_and_passes(patched):
    from llamafactory.extras.env import VERSION

    assert VERSION == SUPPORTED_VERSION == "0.9.5"
    check_llamafactory(_TRAINING_NAMES, _TRAINING_USES)
    check_llamafactory(_WEBUI_NAMES, _WEBUI_USES)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("llamafactory.train.sft.workflow", "CustomSeq2SeqTrainer"),
        ("llamafactory.hparams.parser", "_TRAIN_ARGS"),
        ("llamafactory.launcher", "subprocess"),
    ],
)
def test_missing_private_name_stops_with_the_supported_version(patched, monkeypatch, module, name):
    import importlib

    monkeypatch.delattr(importlib.import_module(module), name)
    with pytest.raises(UnsupportedLlamaFactoryError, match=f"supports LLaMA-Factory 0.9.5(.|\n)*{module}.{name}"):
        check_llamafactory(_TRAINING_NAMES, _TRAINING_USES)


def test_missing_webui_name_stops(patched, monkeypatch):
    from llamafactory.webui import runner

    monkeypatch.delattr(runner.Runner, "_parse_train_args")
    with pytest.raises(UnsupportedLlamaFactoryError, match="Runner._parse_train_args"):
        check_llamafactory(_WEBUI_NAMES, _WEBUI_USES)


def test_function_that_no_longer_uses_a_patched_name_stops(patched, monkeypatch):
    from llamafactory.train import tuner

    def _training_function(config):  # a future version that builds its trainer differently
        return config

    monkeypatch.setattr(tuner, "_training_function", _training_function)
    with pytest.raises(UnsupportedLlamaFactoryError, match="_training_function \\(no longer uses 'get_train_args'\\)"):
        check_llamafactory(_TRAINING_NAMES, _TRAINING_USES)


def test_apply_refuses_an_unsupported_version(monkeypatch):
    from llamafactory.train.sft import workflow

    from scale_plugins.llamafactory import patch

    monkeypatch.setattr(patch, "_applied", set())
    monkeypatch.delattr(workflow, "run_sft")
    with pytest.raises(UnsupportedLlamaFactoryError, match="0.9.5"):
        patch.apply_training_patches()
    assert "training" not in patch._applied


TESTED_WARNING = "scale-llamafactory is tested with llamafactory >=0.9.5,<0.9.6, transformers >=5.6,<5.24, torch"


def test_another_version_with_every_name_warns_once_naming_the_tested_range(patched, monkeypatch):
    """Not a refusal: a version that has every name the patches need runs, after one warning naming the tested range
    (scale_plugins.versions); the version checked is the one LLaMA-Factory reports."""
    from scale_plugins import versions
    from scale_plugins.llamafactory import patch

    monkeypatch.setattr(versions, "_warned", set())
    monkeypatch.setenv(versions.WARNED_ENV, "")  # the warning sets it: monkeypatch removes it again afterwards
    monkeypatch.delenv("RANK", raising=False)
    warnings = []
    monkeypatch.setattr(patch, "_logger", lambda: SimpleNamespace(warning=warnings.append))
    check_llamafactory(_TRAINING_NAMES, _TRAINING_USES)
    assert warnings == []  # 0.9.5: quiet
    monkeypatch.setattr(patch, "_installed_version", lambda: "0.9.6")
    check_llamafactory(_TRAINING_NAMES, _TRAINING_USES)
    check_llamafactory(_WEBUI_NAMES, _WEBUI_USES)
    [warning] = warnings
    assert warning.startswith(TESTED_WARNING) and "installed: llamafactory 0.9.6," in warning
    assert warning.endswith("Every name it patches is present, continuing.")


def test_another_version_runs_the_command_after_the_warning(tiny, tmp_path):
    """Through the real command (LLaMA-Factory's VERSION changed in the process): the warning, then the launcher goes
    on (here to the config check, which reports the bad value)."""
    code = (
        "import sys, llamafactory.extras.env as env; env.VERSION = '0.9.6'; "
        "from scale_plugins.llamafactory.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    config = write_yaml(tmp_path / "bad.yaml", train_config(tiny, tmp_path / "out", scale_schedule="cosin"))
    env = {**os.environ, "LLAMAFACTORY_VERBOSITY": "INFO"}
    result = subprocess.run(
        [sys.executable, "-c", code, "train", str(config)], env=env, capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert output.count(TESTED_WARNING) == 1 and "installed: llamafactory 0.9.6," in output
    assert result.returncode == 2 and "error: scale_schedule: 'cosin' is not allowed" in result.stderr


def test_readme_and_docs_describe_the_guard_as_it_behaves():
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    supported = readme[readme.index("## Supported versions") :]
    row = next(line for line in supported.splitlines() if line.startswith("| LLaMA-Factory |"))
    assert "a warning naming the tested range" in row and "error listing what is missing" in row
    assert "refuses" not in row
    docs = " ".join((root / "docs" / "llamafactory.md").read_text().split())
    assert "Another version that has all of them runs, after one warning: `scale-llamafactory is tested with" in docs
    assert "Running another version is not supported" not in docs


def test_torchrun_command_runs_our_worker_module():
    launcher_file = "/site-packages/llamafactory/launcher.py"
    cmd = (
        f"torchrun --nnodes 1 --node_rank 0 --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29500 "
        f"{launcher_file} cfg.yaml learning_rate=1e-4"
    ).split()
    assert rewrite_torchrun_command(cmd, launcher_file) == [
        sys.executable, "-m", "torch.distributed.run",
        *cmd[1:-3], "-m", WORKER_MODULE, "cfg.yaml", "learning_rate=1e-4",
    ]  # fmt: skip
    with pytest.raises(UnsupportedLlamaFactoryError, match="does not run its launcher file"):
        rewrite_torchrun_command(["torchrun", "other.py"], launcher_file)
