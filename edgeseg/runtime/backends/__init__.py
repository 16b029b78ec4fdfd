"""Runtime backends: one module per runtime, each a small :class:`Backend`.

A backend only runs the model: it takes the preprocessed input batch and returns the raw
outputs by name. Preprocessing and decoding are shared (``preprocess.py``, ``decode.py``), so a
new runtime is a few dozen lines.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import numpy as np

from ...bundle import Bundle
from ...errors import EdgesegError, ToolchainMissing
from ...options import describe, parse
from ...plugins import module_names


class Requirement(NamedTuple):
    """What a backend module imports to run (``REQUIRES``): read by ``doctor`` and checked before a
    bundle opens, without importing the runtime itself (backends import it when they open)."""

    module: str  # import name
    distribution: str  # for its version
    install: str  # the exact command that installs it
    alternatives: tuple[str, ...] = ()  # other import names that serve as well
    replay: bool = False  # without it, the backend replays outputs recorded at conversion (no refusal)

    def installed(self) -> bool:
        for name in (self.module, *self.alternatives):
            try:
                if importlib.util.find_spec(name) is not None:
                    return True
            except (ImportError, ValueError):
                pass
        return False


def runtime_names() -> list[str]:
    """Every runtime (a manifest's ``runtime``): the modules of this package and of the plugin
    folders on EDGESEG_PLUGIN_PATH (:mod:`edgeseg.plugins`)."""
    return module_names(__path__, "backends")


def backend_module(name: str) -> Any:
    """The backend module for a runtime name, without importing the runtime itself."""
    known = runtime_names()
    if name not in known:
        raise EdgesegError(f"runtime '{name}' is not supported by this edgeseg; known: {', '.join(known)}")
    return importlib.import_module(f"{__name__}.{name}")


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


def _missing(bundle: Bundle, req: Requirement, why: str) -> ToolchainMissing:
    return ToolchainMissing(f"{bundle.path}: needs the {req.distribution} runtime ({why}); "
                            f"install it with: {req.install}")


def _module(bundle: Bundle) -> Any:
    try:
        mod = backend_module(bundle.manifest.runtime)
    except EdgesegError as e:
        raise EdgesegError(f"{bundle.path}: {e}") from None
    req: Requirement | None = getattr(mod, "REQUIRES", None)
    if req is not None and not req.replay and not req.installed():
        raise _missing(bundle, req, f"{req.module} is not installed")
    return mod


def describe_options(options: dict) -> str:
    return describe(options)


def parse_options(bundle: Bundle, pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings from a command line, typed by the bundle's runtime's ``OPTIONS``."""
    allowed = getattr(_module(bundle), "OPTIONS", {})
    return parse(pairs, allowed, flag="--runtime-option", owner=f"the {bundle.manifest.runtime} runtime")


def open_backend(bundle: Bundle, **options: Any) -> Backend:
    name = bundle.manifest.runtime
    mod = _module(bundle)
    allowed = getattr(mod, "OPTIONS", {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EdgesegError(f"{bundle.path}: the {name} runtime has no option {', '.join(unknown)}; "
                           + (f"its options: {describe_options(allowed)}" if allowed else "it takes none"))
    if "threads" in options:  # here, so that edgeseg.load(threads=...) is bounded as the flags are
        from ...bundle import check_threads

        check_threads(options["threads"], "--threads / threads=")
    from ..loadcheck import PROBE_FILE, open_checked

    def make() -> Backend:
        try:
            return mod.BACKEND(bundle, **options)
        except ImportError as e:  # installed but cannot load (a missing system library, another numpy)
            req = getattr(mod, "REQUIRES", None)
            if req is None:
                raise
            raise _missing(bundle, req, f"{e.name or req.module} cannot be imported: {e}") from None

    if (bundle.path / PROBE_FILE).is_file():  # a runtime whose loads can differ (see loadcheck.py)
        return open_checked(bundle, make)
    return make()


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

