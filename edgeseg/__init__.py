"""edgeseg: take a trained segmentation model to an edge device and run it on a live camera."""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bundle import Bundle

__version__ = "0.1.0"

# ONNX Runtime >= 1.29 on Linux keeps a device id and uploads usage events unless told not to
# before it initialises (microsoft/onnxruntime#27379); an unattended camera, a conversion and the
# toolchain environments edgeseg starts (they inherit this) send nothing. ORT_DISABLE_TELEMETRY=0
# in the caller's environment keeps Microsoft's default.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


class _NoOpenVinoTelemetryWithoutConsent(importlib.abc.MetaPathFinder):
    """``import openvino`` sends a Google Analytics event (from a forked process) and writes a client
    id under ~/intel when no consent file exists: OpenVINO counts a missing answer as yes. Until
    the user answers (``opt_in_out --opt_in`` writes ~/intel/openvino_telemetry), its telemetry
    package is not importable here and OpenVINO and NNCF use their own no-op stubs."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "openvino_telemetry":
            try:
                answered = (Path.home() / "intel" / "openvino_telemetry").exists()
            except RuntimeError:  # no home folder: nobody could have answered
                answered = False
            if not answered:
                raise ImportError("edgeseg: no OpenVINO telemetry without a recorded consent", name=name)
        return None


sys.meta_path.insert(0, _NoOpenVinoTelemetryWithoutConsent())

__all__ = ["__version__", "draw", "load"]


def __getattr__(name: str) -> object:
    # ``edgeseg.draw(frame, result)``: imported on first use, so ``import edgeseg`` stays free of
    # OpenCV for a program that only converts
    if name == "draw":
        from .runtime.draw import draw

        return draw
    raise AttributeError(f"module 'edgeseg' has no attribute {name!r}")


def load(bundle: str | os.PathLike | Bundle, *, conf: float = 0.25, iou: float = 0.7,
         classes: list[int | str] | None = None, max_det: int = 300, **backend_options: object):
    """Load a bundle for inference: ``edgeseg.load("bundle")(frame)`` returns a FrameResult.

    ``conf``, ``iou`` and ``max_det`` are Ultralytics' defaults; ``classes`` keeps only these ids or
    names; ``backend_options`` go to the runtime (e.g. ``threads=2``, OpenVINO ``device="GPU"``).
    """
    from .runtime.model import Model, Thresholds

    model = Model.load(bundle, **backend_options)
    try:
        ids = model.class_ids(classes) if classes else None
    except BaseException:
        model.close()  # an NPU context or camera-side network is not left open behind the error
        raise
    model.thresholds = Thresholds(conf=conf, iou=iou, classes=ids, max_det=max_det)
    return model
