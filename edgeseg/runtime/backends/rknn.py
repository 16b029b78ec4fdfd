"""Rockchip NPU backend on rknn-toolkit-lite2 (``RKNNLite``), on the board.

On any other machine ``rknnlite`` does not import; there, a bundle whose simulator outputs were
recorded at conversion (``--verify-data``) is replayed so that ``edgeseg eval`` scores exactly
what the NPU simulator computed, through the same decoder.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ...errors import EdgesegError, ToolchainMissing
from . import Backend, ReplayBackend, Requirement, has_recorded_outputs

# without it, bundles converted on this host replay the simulator's recorded outputs
REQUIRES = Requirement("rknnlite", "rknn-toolkit-lite2",
                       "pip install rknn-toolkit-lite2 (aarch64 board, with Rockchip's librknnrt.so)", replay=True)

OPTIONS = {"core_mask": (str, "NPU cores: auto, 0, 1, 2, 0_1 or all (as many as the SoC has)")}


def core_masks(bundle) -> dict[str, str]:
    """The ``core_mask`` values the bundle's SoC has, as RKNNLite constant names: RK3588 has
    three NPU cores, RK3576 two, the others one (where only ``auto`` exists)."""
    prof = bundle.manifest.profile
    platform = bundle.manifest.quantization.get("platform") or prof.get("platform", "rk3588")
    cores = int(prof.get("platforms", {}).get(platform, {}).get("npu_cores", 3))
    masks = {"auto": "NPU_CORE_AUTO"}
    if cores > 1:
        masks.update({str(i): f"NPU_CORE_{i}" for i in range(cores)})
        masks["0_1"] = "NPU_CORE_0_1"
        masks["all"] = "NPU_CORE_" + "_".join(str(i) for i in range(cores))
    return masks


class RknnLiteBackend(Backend):
    name = "rknn"

    def __init__(self, bundle, core_mask: str | None = None, **options: Any):
        super().__init__(bundle, **options)
        from rknnlite.api import RKNNLite  # the board's runtime; absent elsewhere

        ro = bundle.manifest.profile.get("runtime_options", {})
        mask = str(core_mask or ro.get("core_mask", "auto"))
        masks = core_masks(bundle)
        soc = bundle.manifest.quantization.get("platform", "Rockchip")
        if mask not in masks:
            raise EdgesegError(f"{bundle.path}: core_mask={mask} does not exist on {soc}; choose one of: "
                               + ", ".join(masks))
        self.rk = RKNNLite(verbose=False)
        if self.rk.load_rknn(str(bundle.file(bundle.manifest.model_files[0]))) != 0:
            raise EdgesegError(f"{bundle.path}: rknn-toolkit-lite2 could not read the model (see its log above); "
                               "convert it again with this board's rknn-toolkit2 version")
        # single-core SoCs take no core_mask at all (Rockchip's own examples leave it out there)
        ret = (self.rk.init_runtime(core_mask=getattr(RKNNLite, masks[mask])) if len(masks) > 1
               else self.rk.init_runtime())
        if ret != 0:  # RKNNLite logs why (no driver, no librknnrt.so, a container) and returns -1
            self.rk.release()
            raise EdgesegError(f"{bundle.path}: the NPU runtime did not start (see rknnlite's log above); it needs "
                               f"an {soc} board with the rknpu driver (`ls /dev/dri/renderD*`, `dmesg | grep -i "
                               "rknpu`) and Rockchip's librknnrt.so in /usr/lib; in a container, pass the NPU's "
                               "/dev/dri device and /proc/device-tree/compatible through (examples/rk3588)")
        self.names = [o["name"] for o in bundle.manifest.outputs]
        self.shapes = [o.get("shape") for o in bundle.manifest.outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # uint8 NHWC straight from the camera: normalisation is folded into the model
        outs = self.rk.inference(inputs=[x], data_format="nhwc")
        if outs is None or len(outs) != len(self.names):  # RKNNLite logs its reason and returns None
            raise EdgesegError(f"{self.bundle.path}: the NPU returned "
                               + ("nothing" if outs is None
                                  else f"{len(outs)} outputs, the bundle has {len(self.names)}")
                               + "; see rknnlite's log above, and that the bundle was converted for this SoC")
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
