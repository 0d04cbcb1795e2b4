"""The versions scale-plugins is tested with, and the one start-up warning each adapter gives outside them.

:data:`TESTED` is the one definition: the extras of ``pyproject.toml`` declare exactly these ranges (a test checks
it), and the CI lanes (``make test``, docs/development.md) test each range at both of its ends. Outside a range an
adapter still runs, after one warning naming the tested ranges (:func:`warn_if_untested`), given once per launch:
by the process that starts first (a launcher, or global rank 0), not again by the workers it starts.

Standard library only (``packaging``, which every host installs with transformers, is imported when needed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping

#: package -> (the oldest tested version, the first untested one): the range ``>=low,<high``.
TESTED: dict[str, tuple[str, str]] = {
    "torch": ("2.13", "2.14"),
    "transformers": ("5.6", "5.24"),
    "trl": ("0.24", "1.17"),
    "axolotl": ("0.19", "0.20"),
    "llamafactory": ("0.9.5", "0.9.6"),
    "deepspeed": ("0.19.8", "0.20"),
}

#: adapter -> (how its messages name it, the packages its start-up checks). Axolotl pins transformers itself.
ADAPTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "trl": ("scale-plugins (TRL)", ("trl", "transformers", "torch")),
    "axolotl": ("scale-plugins (Axolotl)", ("axolotl", "transformers", "torch")),
    "llamafactory": ("scale-llamafactory", ("llamafactory", "transformers", "torch")),
}

#: Set in the environment once the warning was given: the processes a launcher starts inherit it and stay quiet.
WARNED_ENV = "SCALE_PLUGINS_VERSION_WARNED"


def range_spec(package: str) -> str:
    """The tested range of ``package`` as a pip specifier, e.g. ``>=0.24,<1.17``."""
    low, high = TESTED[package]
    return f">={low},<{high}"


def installed_version(package: str) -> str | None:
    """The installed version of ``package`` (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def is_tested(package: str, version: str) -> bool:
    """Whether ``version`` lies in ``package``'s tested range (a local label such as ``+cpu`` is ignored; a
    pre-release of the first untested version is outside, as pip reads ``<``)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion

    try:
        return SpecifierSet(range_spec(package)).contains(version, prereleases=True)
    except InvalidVersion:
        return False


def untested(adapter: str, installed: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The packages of ``adapter`` installed outside their tested range -> their version. ``installed`` overrides
    what is read from the environment (a host that reports its own version)."""
    found = {}
    for package in ADAPTERS[adapter][1]:
        version = (installed or {}).get(package) or installed_version(package)
        if version is not None and not is_tested(package, version):
            found[package] = version
    return found


def version_warning(adapter: str, installed: Mapping[str, str | None] | None = None) -> str | None:
    """The start-up warning of ``adapter``, or None when everything it checks is in its tested range."""
    outside = untested(adapter, installed)
    if not outside:
        return None
    name, packages = ADAPTERS[adapter]
    ranges = ", ".join(f"{p} {range_spec(p)}" for p in packages)
    got = ", ".join(f"{p} {v}" for p, v in outside.items())
    pins = " ".join(f"'{p}{range_spec(p)}'" for p in outside)
    return (
        f"{name} is tested with {ranges}; installed: {got}, outside that range. SCALe runs, but untested: check "
        f"the `scale/*` metrics of the first steps, or install a tested version (pip install {pins})."
    )


_warned: set[str] = set()


def warn_if_untested(
    adapter: str,
    warn: Callable[[str], object],
    installed: Mapping[str, str | None] | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> str | None:
    """Give ``adapter``'s :func:`version_warning` through ``warn``, once: not again in this process, not on a
    worker of global rank > 0, and not in a process started by one that gave it (``WARNED_ENV``). Returns the
    message when it was given."""
    environ = os.environ if environ is None else environ
    if adapter in _warned or environ.get(WARNED_ENV) or environ.get("RANK", "0") != "0":
        return None
    message = version_warning(adapter, installed)
    if message is None:
        return None
    _warned.add(adapter)
    environ[WARNED_ENV] = "1"
    warn(message)
    return message
