"""Rockchip NPU backend on rknn-toolkit-lite2 (``RKNNLite``), on the board.

On any other machine ``rknnlite`` does not import; there, a bundle whose simulator outputs were
recorded at conversion (``--verify-data``) is replayed so that ``edgeseg eval`` scores exactly
what the NPU simulator computed, through the same decoder.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ...errors import ToolchainMissing
from . import Backend, ReplayBackend, has_recorded_outputs

CORE_MASKS = {"auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
              "all": "NPU_CORE_0_1_2", "0_1": "NPU_CORE_0_1"}
OPTIONS = {"core_mask": (str, "NPU cores: " + ", ".join(CORE_MASKS))}


class RknnLiteBackend(Backend):
    name = "rknn"

    def __init__(self, bundle, core_mask: str | None = None, **options: Any):
        super().__init__(bundle, **options)
        from rknnlite.api import RKNNLite  # the board's runtime; absent elsewhere

        ro = bundle.manifest.profile.get("runtime_options", {})
        mask = str(core_mask or ro.get("core_mask", "auto"))
        if mask not in CORE_MASKS:
            raise ValueError(f"core_mask must be one of {sorted(CORE_MASKS)}")
        self.rk = RKNNLite(verbose=False)
        if self.rk.load_rknn(str(bundle.file(bundle.manifest.model_files[0]))) != 0:
            raise RuntimeError("load_rknn failed")
        if self.rk.init_runtime(core_mask=getattr(RKNNLite, CORE_MASKS[mask])) != 0:
            raise RuntimeError("init_runtime failed (is librknnrt.so installed on this board?)")
        self.names = [o["name"] for o in bundle.manifest.outputs]
        self.shapes = [o.get("shape") for o in bundle.manifest.outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # uint8 NHWC straight from the camera: normalisation is folded into the model
        outs = self.rk.inference(inputs=[x], data_format="nhwc")
        return {n: (np.asarray(o).reshape(s) if s else np.asarray(o)) for n, o, s in zip(self.names, outs, self.shapes)}

    def close(self) -> None:
        self.rk.release()


class SimulatedRknnBackend(ReplayBackend):
    """Host stand-in for the NPU: replays the toolkit simulator's recorded outputs."""

    name = "rknn-simulator"


def BACKEND(bundle, **options: Any) -> Backend:  # noqa: N802 - the registry's factory name
    try:
        importlib.import_module("rknnlite.api")
    except ImportError:
        if has_recorded_outputs(bundle):
            return SimulatedRknnBackend(bundle, **options)
        raise ToolchainMissing(f"{bundle.path}: RKNN bundles run on a Rockchip board with rknn-toolkit-lite2 "
                               "(pip install rknn-toolkit-lite2; aarch64 only); on this machine only bundles "
                               "converted here with --verify-data can be evaluated (simulator replay)") from None
    return RknnLiteBackend(bundle, **options)
