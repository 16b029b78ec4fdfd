"""One module per vendor toolchain, each behind the small :class:`Toolchain` interface.

A toolchain answers three questions the same way for every target: is it available (and if
not, the exact install command), convert (canonical FP32 ONNX + profile + calibration set ->
files in the bundle folder), and how to run the result on this host to measure fidelity.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import EdgesegError
from ...profiles import Profile
from ...quiet import native_stdout_silenced

if TYPE_CHECKING:  # the host-only modules are not needed to ask whether a toolchain is installed
    from ..calibration import CalibrationSet
    from ..importer import ImportedModel

# toolchain name (profiles' ``toolchain`` key) -> module under this package
REGISTRY = {"onnxruntime": "onnxruntime", "openvino": "openvino", "mnn": "mnn", "rknn": "rknn", "ncnn": "ncnn", "tflite": "tflite",
            "imx500": "imx500"}


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
    precision: str  # int8 | fp16 | fp32
    calib: CalibrationSet | None
    workdir: Path  # the bundle's temporary folder: write model files here
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, Any]:
        """The profile's [quantization] with ``--option KEY=VALUE`` applied."""
        return {**self.profile.quantization, **(self.options.get("set") or {})}

    def scratch(self, tag: str) -> Path:
        """An empty working folder beside the bundle's temporary folder; the toolchain removes it."""
        import shutil

        d = self.workdir.parent / f"{self.workdir.name}.{tag}-work"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    def log_path(self, tag: str) -> Path:
        """Where a vendor tool's output goes: deleted on success, kept and named in the error otherwise."""
        return Path(self.options.get("log_dir") or self.workdir.parent) / f"{self.workdir.name.strip('.')}.{tag}.log"


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
    settable: bool = False  # whether `--option KEY=VALUE` may override the profile's [quantization]
    load_check: bool = False  # bundles carry a probe that each load must reproduce (runtime/loadcheck.py)

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

    def host_runner(self, bundle_dir: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]] | None:
        """A function running the converted model on this host, to measure fidelity before a device.

        By default the target's own runtime backend (when it runs on this host); toolchains whose
        runtime needs the device override this with their simulator.
        """
        from ...bundle import Bundle
        from ...runtime.backends import open_backend

        return open_backend(Bundle.load(bundle_dir, verify=False)).run


def load_toolchain(name: str) -> Toolchain:
    """The toolchain object for a profile's ``toolchain`` name, installed or not."""
    if name not in REGISTRY:
        raise EdgesegError(f"no toolchain '{name}' in this edgeseg; known: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(f"{__name__}.{REGISTRY[name]}").TOOLCHAIN


def get_toolchain(name: str) -> Toolchain:
    """The toolchain, or ToolchainMissing with the exact install command."""
    tc = load_toolchain(name)
    av = tc.availability()
    if not av.installed:
        from ...errors import ToolchainMissing
        raise ToolchainMissing(f"the {name} toolchain is not installed ({av.detail}); install it with: {av.install}")
    return tc
