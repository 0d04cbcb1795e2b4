"""The built sdist and wheel, installed as users install them into the environment they train in (#23 item 2).

``make test`` builds them once (``build``) and checks them in each host lane's own environment (``check``), whose
host sits inside the tested range (scale_plugins/versions.py), in two lanes at a version other than the newest
(llamafactory: trl 0.24, transformers 5.6; axolotl: trl 1.9, transformers 5.16)::

    python tests/installed_wheel.py build DIST        # the sdist from the source files, then the wheel from the sdist
    python tests/installed_wheel.py check HOST DIST   # HOST: trl, axolotl or llamafactory

``check`` does two things. (1) pip's own resolver, for real: ``pip install --dry-run --report`` of the wheel, alone
and with the extras ``[HOST,deepspeed]``, into this environment: pip must want to install scale-plugins (from this
wheel) and nothing else, so no package of the host moves. (2) The wheel installed with ``--no-deps`` into a scratch
folder and a smoke test run from it, outside the clone (``smoke``): every ``scale_plugins`` module comes from that
folder, the recipes ship in it, and the host's adapter builds its SCALe trainer or config.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAME = "scale-plugins"
HOSTS = ("trl", "axolotl", "llamafactory")
#: The packages of each host lane that must stay as they are (their versions are printed; pip's report must not
#: name any package but scale-plugins, these included).
HOST_PACKAGES = {
    "trl": ("trl", "transformers", "torch", "accelerate", "peft", "datasets", "deepspeed"),
    "axolotl": ("axolotl", "trl", "transformers", "torch", "accelerate", "peft", "datasets", "deepspeed"),
    "llamafactory": ("llamafactory", "trl", "transformers", "torch", "accelerate", "peft", "datasets", "deepspeed"),
}
#: What the wheel must carry besides the code (setup.py copies recipes/ into it; package-data).
SHIPPED = (
    "scale_plugins/recipes/deepspeed/zero2.json",
    "scale_plugins/data/synthetic_cot.jsonl",
    "scale_plugins/py.typed",
)


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise SystemExit(
            f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


# -- build -------------------------------------------------------------------------------------------------------


def source_files(root: Path = ROOT) -> list[str]:
    """The files a clone has (tracked, and untracked ones git does not ignore): what the sdist is built from."""
    out = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root).stdout
    return [name for name in out.split("\0") if name and (root / name).is_file()]


def build(dist: Path) -> tuple[Path, Path]:
    """The sdist from a copy of the source files, then the wheel from that sdist, as pip builds a source package.

    Without build isolation: the environment's setuptools (>= 68, pyproject.toml) builds it, offline."""
    dist.mkdir(parents=True, exist_ok=True)
    for old in [*dist.glob("scale_plugins-*.tar.gz"), *dist.glob("scale_plugins-*.whl")]:
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="scale-build-") as tmp:
        source = Path(tmp) / "src"
        for name in source_files():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / name, source / name)
        code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
        _run([sys.executable, "-c", code, str(dist.resolve())], cwd=source)
        (sdist,) = dist.glob("scale_plugins-*.tar.gz")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist.resolve()), str(sdist)], cwd=tmp)
    (wheel,) = dist.glob("scale_plugins-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in SHIPPED if name not in names]
    assert not missing, f"{wheel.name} lacks {missing}: recipes/ not in the sdist (MANIFEST.in) or package-data"
    assert not [name for name in names if name.startswith("tests/")], f"{wheel.name} ships tests/"
    with tarfile.open(sdist) as archive:
        assert any(name.endswith("/recipes/deepspeed/zero2.json") for name in archive.getnames()), sdist.name
    return sdist, wheel


# -- check (1): pip's resolution into this environment ----------------------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolution_problems(report: Mapping[str, Any], wheel: Path, missing: Iterable[str] = ()) -> list[str]:
    """What is wrong with pip's ``--report`` of installing ``wheel``: any package other than scale-plugins that pip
    would install, upgrade, downgrade or reinstall (except one in ``missing``: required by a package already
    installed, but absent), and a scale-plugins that is not this wheel."""
    problems = []
    allowed = {_normal(name) for name in missing}
    install = report.get("install", [])
    for item in install:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if _normal(name) == NAME:
            if not item.get("download_info", {}).get("url", "").endswith("/" + wheel.name):
                problems.append(
                    f"pip would install {name} {version} from {item.get('download_info')}, not {wheel.name}"
                )
        elif _normal(name) not in allowed:
            problems.append(f"pip would install {name} {version}")
    if not any(_normal(item["metadata"]["name"]) == NAME for item in install):
        problems.append(f"pip would not install {NAME} at all")
    return problems


def missing_requirements() -> dict[str, str]:
    """Packages this environment lacks although an installed one requires them (``pip check``) -> who requires."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "check"], capture_output=True, text=True
    ).stdout
    found = re.findall(r"^(\S+) \S+ requires (\S+), which is not installed\.$", out, re.MULTILINE)
    return {_normal(needed): who for who, needed in found}


def installed_versions(packages: Iterable[str]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def check_resolution(host: str, wheel: Path, scratch: Path) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # scale_plugins.versions of this source, for the tested ranges
    from scale_plugins.versions import TESTED, is_tested

    before = installed_versions(HOST_PACKAGES[host])
    assert before[host], f"{host} is not installed in this environment ({sys.executable})"
    outside = {p: v for p, v in before.items() if p in TESTED and v and not is_tested(p, v)}
    assert not outside, f"this lane's {outside} are outside the tested ranges: not the environment this check needs"
    print(f"  {host} lane: " + ", ".join(f"{p} {v}" for p, v in before.items() if v), flush=True)
    missing = missing_requirements()
    # the plain wheel: nothing but itself; with the extras, also what the environment already lacked (the
    # llamafactory lane removes torchvision, which llamafactory requires: docs/llamafactory.md)
    for requirement, allowed in ((str(wheel), {}), (f"{wheel}[{host},deepspeed]", missing)):
        report_file = scratch / "report.json"
        start = time.monotonic()
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run", "-q"]
        _run([*pip, "--report", str(report_file), requirement], cwd=scratch)
        report = json.loads(report_file.read_text())
        problems = resolution_problems(report, wheel, allowed)
        assert not problems, f"pip install {requirement} into the {host} environment would change it: {problems}"
        label = requirement.replace(str(wheel), wheel.name)
        added = {i["metadata"]["name"]: i["metadata"]["version"] for i in report["install"]}
        note = "".join(
            f"; adds {name} {v}, which {allowed[_normal(name)]} requires and this environment lacked"
            for name, v in added.items()
            if _normal(name) != NAME
        )
        print(f"  pip install --dry-run {label}: scale-plugins, nothing installed changes{note} ", end="")
        print(f"({time.monotonic() - start:.0f} s)", flush=True)
    assert installed_versions(HOST_PACKAGES[host]) == before  # a dry run: pip changed nothing here either


# -- check (2): a smoke test from the installed wheel, outside the clone ----------------------------------------


def run_smoke(host: str, target: Path, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    """``smoke`` in a fresh interpreter, in ``cwd``, with ``pythonpath`` (default: ``target``) first on the path;
    ``-P``: not this script's folder."""
    env = {**os.environ, "PYTHONPATH": pythonpath if pythonpath is not None else str(target)}
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "smoke", host, str(target)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def check_smoke(host: str, wheel: Path, scratch: Path) -> None:
    target = scratch / "site"
    start = time.monotonic()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "-q", "--no-deps"]
    _run([*pip, "--no-compile", "--target", str(target), str(wheel)], cwd=scratch)
    result = run_smoke(host, target, scratch)
    assert result.returncode == 0, (
        f"smoke test from the installed wheel failed:\n{result.stdout}{result.stderr[-5000:]}"
    )
    print("".join(f"  {line}\n" for line in result.stdout.splitlines()), end="")
    print(f"  smoke test from the installed wheel: passed ({time.monotonic() - start:.0f} s)", flush=True)


def _inside(path: str | os.PathLike[str] | None, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


def smoke(host: str, target: Path) -> None:
    """Run in the child: what a user of the wheel gets. Fails first of all when scale_plugins is not the wheel's."""
    import scale_plugins

    assert _inside(scale_plugins.__file__, target), (
        f"scale_plugins imported from {scale_plugins.__file__}, not from the installed wheel in {target}"
    )
    from importlib.metadata import distribution

    dist = distribution(NAME)
    assert _inside(str(dist.locate_file("scale_plugins/__init__.py")), target), "the wheel's metadata is not first"
    scripts = {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"scale-plugins", "scale-llamafactory"}, scripts
    from scale_plugins.tools.recipes import recipe_files, recipes_source

    assert _inside(str(recipes_source()), target), f"recipes read from {recipes_source()}, not the wheel"
    files = recipe_files()
    assert "recipes/deepspeed/zero3.json" in files and any(rel.startswith(f"recipes/{host}/") for rel in files)
    print(f"scale_plugins {scale_plugins.__version__} from the wheel; {len(files)} recipe files shipped")
    with tempfile.TemporaryDirectory(prefix="scale-smoke-") as tmp:
        {"trl": _smoke_trl, "axolotl": _smoke_axolotl, "llamafactory": _smoke_llamafactory}[host](Path(tmp))
    stray = [m for m, mod in sys.modules.items() if m.startswith("scale_plugins") and not _inside(mod.__file__, target)]
    assert not stray, f"modules not from the wheel: {stray}"


def _tiny(tmp: Path) -> tuple[Any, Any]:
    from scale_plugins.hf.offline_tokenizers import bpe_tokenizer
    from scale_plugins.hf.tiny_model import tiny_causal_lm

    tokenizer = bpe_tokenizer()
    return tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1), tokenizer


def _smoke_trl(tmp: Path) -> None:
    """ScaleSFTTrainer trains one step on the bundled data and logs the SCALe metrics."""
    import datasets

    from scale_plugins.data import synthetic_cot
    from scale_plugins.trl import ScaleSFTConfig, ScaleSFTTrainer

    model, tokenizer = _tiny(tmp)
    args = ScaleSFTConfig(
        output_dir=str(tmp),
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=128,
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
    )
    rows = [{"prompt": s["messages"][:1], "completion": s["messages"][1:]} for s in synthetic_cot(4)]
    trainer = ScaleSFTTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"scale/think_loss", "scale/answer_loss"} <= logged, logged
    print(f"trl: ScaleSFTTrainer trained 1 step ({sorted(k for k in logged if k.startswith('scale/'))[:3]} ...)")


def _smoke_axolotl(tmp: Path) -> None:
    """Axolotl validates a `loss: scale` config with the plugin (and the pydantic guard) and picks the SCALe trainer."""
    from importlib.metadata import distribution

    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    guard = [ep for ep in distribution(NAME).entry_points if ep.group == "pydantic"]
    assert [ep.value for ep in guard] == ["scale_plugins.axolotl.guard:plugin"], guard
    from axolotl.integrations.base import PluginManager

    from scale_plugins.axolotl import ScaleAxolotlTrainer
    from scale_plugins.core import ScaleOptions

    cfg = DictDefault(
        base_model="unused",
        datasets=[{"path": "unused.jsonl", "type": "chat_template"}],
        micro_batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        output_dir=str(tmp),
        plugins=["scale_plugins.axolotl.ScalePlugin"],
        loss="scale",
        scale_schedule="linear",
    )
    prepare_plugins(cfg)
    cfg = validate_config(cfg)
    trainer_cls = PluginManager.get_instance().get_trainer_cls(cfg)
    assert issubclass(trainer_cls, ScaleAxolotlTrainer), trainer_cls
    assert trainer_cls.scale_bound_options == ScaleOptions(schedule="linear")
    print(f"axolotl: `loss: scale` config validated, trainer {trainer_cls.__name__}")


def _smoke_llamafactory(tmp: Path) -> None:
    """The patched LLaMA-Factory parses `use_scale_loss: true` and its SFT workflow builds ScaleSeq2SeqTrainer."""
    from scale_plugins.core import ScaleOptions
    from scale_plugins.llamafactory import apply_training_patches

    apply_training_patches()
    from llamafactory.train import tuner
    from llamafactory.train.sft import workflow

    from scale_plugins.llamafactory.trainer import ScaleSeq2SeqTrainer
    from scale_plugins.tools.recipes import write_recipes

    write_recipes(tmp / "mine")  # the shipped dataset_info.json and the bundled data it names
    model, tokenizer = _tiny(tmp)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    config = {
        "model_name_or_path": str(tmp / "model"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "template": "chatml",
        "dataset": "synthetic_cot",
        "dataset_dir": str(tmp / "mine" / "recipes" / "llamafactory" / "data"),
        "output_dir": str(tmp / "out"),
        "report_to": "none",
        "use_scale_loss": True,
        "scale_schedule": "linear",
    }
    model_args, _, training_args, finetuning_args, _ = tuner.get_train_args(config)
    assert finetuning_args.scale_options() == ScaleOptions(schedule="linear")
    trainer = workflow.CustomSeq2SeqTrainer(
        model=model, args=training_args, finetuning_args=finetuning_args, processor=None, tokenizer=tokenizer
    )
    assert isinstance(trainer, ScaleSeq2SeqTrainer), type(trainer)
    print(f"llamafactory: use_scale_loss parsed, SFT workflow builds {type(trainer).__name__}")


# -- command line -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build").add_argument("dist", type=Path)
    check = sub.add_parser("check")
    check.add_argument("host", choices=HOSTS)
    check.add_argument("dist", type=Path)
    child = sub.add_parser("smoke")
    child.add_argument("host", choices=HOSTS)
    child.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.command == "build":
        sdist, wheel = build(args.dist)
        print(f"built {sdist.name} and, from it, {wheel.name} ({time.monotonic() - start:.0f} s)")
    elif args.command == "smoke":
        smoke(args.host, args.target)
    else:
        (wheel,) = args.dist.resolve().glob("scale_plugins-*.whl")
        print(f"{wheel.name} into the {args.host} environment:", flush=True)
        with tempfile.TemporaryDirectory(prefix="scale-wheel-") as tmp:
            check_resolution(args.host, wheel, Path(tmp))
            check_smoke(args.host, wheel, Path(tmp))
        print(f"  done ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
