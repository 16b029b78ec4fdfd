"""Target profiles: one declarative TOML file per deployment target, in the top-level ``targets/``.

A profile says which toolchain converts for the target, which runtime backend runs the bundle,
what input the target accepts and which quantization scheme it uses. Later targets add a file
here, a toolchain package and a backend module (or all three in a plugin folder, see
:mod:`edgeseg.plugins`); nothing else needs to know about them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgesegError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def profile_dirs() -> list[Path]:
    from .plugins import plugin_dirs

    here = Path(__file__).resolve().parent
    # wheel installs carry them as package data; a source checkout reads the top-level folder;
    # then the plugin folders (EDGESEG_PLUGIN_PATH), which add targets but cannot shadow edgeseg's
    dirs = [here / "_targets", here.parent / "targets", *(d / "targets" for d in plugin_dirs())]
    return [d for d in dirs if d.is_dir()]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    toolchain: str
    runtime: str
    platform: str = "cpu"
    input: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    runtime_options: dict[str, Any] = field(default_factory=dict)
    platforms: dict[str, Any] = field(default_factory=dict)  # SoC variants of one target (RKNN)
    limits: dict[str, Any] = field(default_factory=dict)  # what the device can hold (IMX500 memory, input size)

    @property
    def precisions(self) -> list[str]:
        return list(self.quantization.get("precisions", ["fp32"]))

    @property
    def default_precision(self) -> str:
        return str(self.quantization.get("default", self.precisions[0]))

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def load_profile(name: str) -> Profile:
    profiles = available_profiles()
    if name not in profiles:
        raise EdgesegError(f"unknown target '{name}'; "
                           f"choose one of: {', '.join(sorted(profiles)) or '(none installed)'}")
    path = profiles[name]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise EdgesegError(f"{path}: invalid TOML ({e}); fix the profile file") from None
    data.setdefault("name", name)
    try:
        return Profile(**data)
    except TypeError as e:
        raise EdgesegError(f"{path}: {e}; fix the profile file") from None
