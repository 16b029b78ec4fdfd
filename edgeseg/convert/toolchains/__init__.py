"""One module per vendor toolchain, each behind the small :class:`Toolchain` interface.

A toolchain answers three questions the same way for every target: is it available (and if
not, the exact install command), convert (canonical FP32 ONNX + profile + calibration set ->
files in the bundle folder), and how to run the result on this host to measure fidelity.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import EdgesegError
from ...options import Option, coerce, parse
from ...plugins import module_names
from ...profiles import Profile
from ...quiet import native_stdout_silenced

if TYPE_CHECKING:  # the host-only modules are not needed to ask whether a toolchain is installed
    from ...runtime.preprocess import InputSpec
    from ..calibration import CalibrationSet
    from ..importer import ImportedModel



# scripts run inside the isolated environments (:mod:`..envs`): they import nothing from edgeseg
WORKERS = Path(__file__).resolve().parent.parent / "workers"


@dataclass
class Availability:
    installed: bool
    versions: dict[str, str] = field(default_factory=dict)
    install: str = ""  # the exact command that installs what is missing
    detail: str = ""


@dataclass
class ConvertJob:
    imported: ImportedModel
    fp32_path: Path  # canonical FP32 ONNX (outputs already split when the head allows)
    outputs: list[dict]  # output descriptions of fp32_path, in decoder order
    profile: Profile
    precision: str  # int8 | fp16 | fp32 | a precision the profile lists
    calibration: CalibrationSet | None  # given when the precision needs one (int8)
    workdir: Path  # the bundle's temporary folder: write model files here
    input: InputSpec  # what fp32_path takes (nchw float32): calibration arrays are made with it
    settings: dict[str, Any] = field(default_factory=dict)  # the toolchain's OPTIONS, typed (see resolve_options)
    keep_float: list[str] = field(default_factory=list)  # node names to leave in float (--keep-float)
    platform: str | None = None  # --platform, for targets with several SoCs
    simulate_images: list[Path] = field(default_factory=list)  # for toolchains that can only simulate while building
    log: Callable[[str], None] = print

    @property
    def calib(self) -> CalibrationSet:
        """The calibration set; an error naming the target when this conversion has none."""
        if self.calibration is None:
            raise EdgesegError(f"target '{self.profile.name}' needs calibration images for {self.precision}; "
                               "pass --calib FOLDER (or convert with --fp16/--fp32)")
        return self.calibration

    def scratch(self, tag: str) -> Path:
        """An empty working folder beside the bundle's temporary folder; the toolchain removes it."""
        import shutil

        d = self.workdir.parent / f"{self.workdir.name}.{tag}-work"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    def log_path(self, tag: str) -> Path:
        """Where a vendor tool's output goes: deleted on success, kept and named in the error otherwise."""
        return self.workdir.parent / f"{self.workdir.name.strip('.')}.{tag}.log"


@dataclass
class ConvertResult:
    model_files: list[str]
    outputs: list[dict]
    quantization: dict[str, Any] = field(default_factory=dict)
    toolchain: dict[str, str] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)  # overrides of the input spec (dtype, layout)
    log: str = ""
    head: dict[str, Any] = field(default_factory=dict)  # additions to the head spec (e.g. anchor grids)
    reference_onnx: Path | None = None  # FP32 model with the bundle's output names, when they differ from fp32_path


def probe(install: str, **modules: str) -> Availability:
    """Availability by importing each module (import name -> distribution name for its version).

    Importing, not just finding the distribution: a wheel that is installed but cannot load
    (missing system library, wrong numpy) counts as missing, with the reason.
    """
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {}
    for mod, dist in modules.items():
        try:
            with native_stdout_silenced():
                importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001 - any failure to load means "not usable"
            return Availability(False, install=install, detail=f"{mod} cannot be imported: {e}")
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "unknown"
    return Availability(True, versions)


class Toolchain(ABC):
    name: str = ""
    # what `convert --option KEY=VALUE` accepts; a key of the same name in the profile's
    # [quantization] replaces the default, so two targets can share a toolchain (tflite, edgetpu)
    OPTIONS: dict[str, Option] = {}
    load_check: bool = False  # bundles carry a probe that each load must reproduce (runtime/loadcheck.py)
    # modules of the vendor that the guarded child process (_guarded.py) refuses to import: an error,
    # or (fallback) a refusal the vendor handles with its own no-op stub
    guard_blocked: frozenset[str] = frozenset()
    guard_fallback: frozenset[str] = frozenset()

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability: ...

    @classmethod
    def optional_tools(cls, target: str) -> dict[str, str]:
        """Tools a conversion for ``target`` uses when present and does without otherwise: name ->
        what was found, or what happens without it (``edgeseg doctor`` shows them)."""
        return {}

    @abstractmethod
    def convert(self, job: ConvertJob) -> ConvertResult: ...

    def guarded_call(self, spec: dict) -> object:
        """The vendor call run inside ``python -m edgeseg.convert.toolchains._guarded`` (no network,
        no subprocesses, no installs); ``spec`` is the JSON the parent wrote."""
        raise NotImplementedError(f"the {self.name} toolchain has no guarded call")

    def host_runner(self, bundle_dir: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]] | None:
        """A function running the converted model on this host, to measure fidelity before a device.

        By default the target's own runtime backend (when it runs on this host); toolchains whose
        runtime needs the device override this with their simulator.
        """
        from ...bundle import Bundle
        from ...runtime.backends import open_backend

        return open_backend(Bundle.load(bundle_dir, verify=False)).run


def toolchain_names() -> list[str]:
    """Every toolchain: the modules and packages of this package (a profile's ``toolchain`` key names
    one), including those of the folders on EDGESEG_PLUGIN_PATH (see :mod:`edgeseg.plugins`)."""
    return module_names(__path__, "toolchains")


def load_toolchain(name: str) -> Toolchain:
    """The toolchain object for a profile's ``toolchain`` name, installed or not."""
    known = toolchain_names()
    if name not in known:
        raise EdgesegError(f"no toolchain '{name}' in this edgeseg; known: {', '.join(known)}")
    return importlib.import_module(f"{__name__}.{name}").TOOLCHAIN


def get_toolchain(name: str) -> Toolchain:
    """The toolchain, or ToolchainMissing with the exact install command."""
    tc = load_toolchain(name)
    av = tc.availability()
    if not av.installed:
        from ...errors import ToolchainMissing
        raise ToolchainMissing(f"the {name} toolchain is not installed ({av.detail}); install it with: {av.install}")
    return tc


def resolve_options(toolchain: Toolchain, profile: Profile, overrides: Mapping[str, Any] | Iterable[str] = ()) -> dict:
    """The toolchain's settings for one conversion: its defaults, then the profile's [quantization]
    values for the same keys, then ``--option KEY=VALUE`` (strings) or a mapping from the API.
    A key the toolchain does not declare is refused with the list of valid ones."""
    out: dict[str, Any] = {k: o.default for k, o in toolchain.OPTIONS.items()}
    for k, v in profile.quantization.items():
        if k in toolchain.OPTIONS:
            try:
                out[k] = coerce(v, toolchain.OPTIONS[k])
            except (TypeError, ValueError):
                raise EdgesegError(f"target '{profile.name}': [quantization] {k} = {v!r} is not a "
                                   f"{toolchain.OPTIONS[k].type.__name__}; fix the profile file") from None
    out.update(parse(overrides, toolchain.OPTIONS, flag="--option", owner=f"target '{profile.name}'"))
    return out


def describe_toolchain_options(toolchain: Toolchain, profile: Profile) -> list[str]:
    """One line per option, with this target's default: ``edgeseg convert --target X --help-options``."""
    current = resolve_options(toolchain, profile)
    lines = []
    for k, o in toolchain.OPTIONS.items():
        kind = "|".join(o.choices) if o.choices else o.type.__name__
        value = ",".join(current[k]) if isinstance(current[k], list) else current[k]
        lines.append(f"{k}={kind}  (default: {value})  {o.help}")
    return lines or [f"target '{profile.name}' takes no --option"]
