"""Runtime backends: one module per runtime, each a small :class:`Backend`.

A backend only runs the model: it takes the preprocessed input batch and returns the raw
outputs by name. Preprocessing and decoding are shared (``preprocess.py``, ``decode.py``), so a
new runtime is a few dozen lines.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ...bundle import Bundle
from ...errors import EdgesegError, ToolchainMissing
from ...install import pip_extra

# runtime name (manifest ``runtime``) -> (backend module, runtime import name, distribution, install command)
REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime", "onnxruntime", pip_extra("onnxruntime")),
    "openvino": ("openvino", "openvino", "openvino", pip_extra("openvino")),
    "mnn": ("mnn", "MNN", "MNN", pip_extra("mnn")),
    "ncnn": ("ncnn", "ncnn", "ncnn", pip_extra("ncnn")),
    "litert": ("litert", "ai_edge_litert", "ai-edge-litert", pip_extra("tflite")),
    "rknn": ("rknn", "rknnlite", "rknn-toolkit-lite2",
             "pip install rknn-toolkit-lite2 (aarch64 board, with Rockchip's librknnrt.so)"),
    "imx500": ("imx500", "picamera2", "picamera2",
               "sudo apt install imx500-all python3-picamera2 (Raspberry Pi OS, AI Camera)"),
}


class Backend(ABC):
    """Runs one bundle's model. Subclasses set ``name`` and implement ``run``."""

    name: str = ""

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        self.bundle = bundle
        self.options = options

    @abstractmethod
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for one preprocessed input batch (as ``manifest.input`` describes)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources (NPU contexts, camera-side networks)."""


def _module(bundle: Bundle) -> Any:
    name = bundle.manifest.runtime
    if name not in REGISTRY:
        raise EdgesegError(f"{bundle.path}: runtime '{name}' is not supported by this edgeseg; "
                           f"known: {', '.join(sorted(REGISTRY))}")
    module, _, package, install = REGISTRY[name]
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ImportError as e:
        raise ToolchainMissing(f"{bundle.path}: needs the {package} runtime ({e.name} is not installed); "
                               f"install it with: {install}") from None


def describe_options(options: dict[str, tuple[type, str]]) -> str:
    return "; ".join(f"{k}={t.__name__} ({h})" for k, (t, h) in options.items())


def parse_options(bundle: Bundle, pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings from a command line, typed by the bundle's runtime's ``OPTIONS``."""
    allowed = getattr(_module(bundle), "OPTIONS", {})
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise EdgesegError(f"--runtime-option {pair}: the {bundle.manifest.runtime} runtime takes KEY=VALUE with "
                               + (f"KEY one of: {describe_options(allowed)}" if allowed else "no keys at all"))
        kind = allowed[key][0]
        value = value.strip()
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif kind is list:
                out[key] = [v.strip() for v in value.split(",") if v.strip()]
            else:
                out[key] = kind(value)
        except ValueError:
            raise EdgesegError(f"--runtime-option {pair}: {key} takes a {kind.__name__}") from None
    return out


def open_backend(bundle: Bundle, **options: Any) -> Backend:
    name = bundle.manifest.runtime
    mod = _module(bundle)
    allowed = getattr(mod, "OPTIONS", {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EdgesegError(f"{bundle.path}: the {name} runtime has no option {', '.join(unknown)}; "
                           + (f"its options: {describe_options(allowed)}" if allowed else "it takes none"))
    from ..loadcheck import PROBE_FILE, open_checked

    if (bundle.path / PROBE_FILE).is_file():  # a runtime whose loads can differ (see loadcheck.py)
        return open_checked(bundle, lambda: mod.BACKEND(bundle, **options))
    return mod.BACKEND(bundle, **options)


class ReplayBackend(Backend):
    """Host stand-in for a device-only runtime: the outputs its vendor tool computed at conversion
    (RKNN simulator, MCT-quantized IMX500 network), looked up by input (see ``runtime/replay.py``)."""

    name = "replay"

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        from ...bundle import sha256_file
        from ..replay import Replay

        self.replay = Replay(sha256_file(bundle.file(bundle.manifest.model_files[0])),
                             f"a {bundle.manifest.target} bundle runs on its device, and on this host only the frames "
                             "its vendor tool ran at conversion replay; to evaluate on a dataset here, convert again "
                             "with --verify-data DATASET.yaml", where=bundle.path)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.replay(x)


def has_recorded_outputs(bundle: Bundle) -> bool:
    """Whether this bundle was converted on this machine with outputs recorded for replay."""
    from ...bundle import sha256_file
    from ..replay import sim_dir

    return sim_dir(sha256_file(bundle.file(bundle.manifest.model_files[0]))).is_dir()

