"""The embedded default: the bundled reference model, its scenes, and where bundles go."""

from __future__ import annotations

import re
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "shapes-yolo11n-seg.onnx"
DEFAULT_CALIB = ASSETS / "shapes" / "calib" / "images"
DEFAULT_DATA = ASSETS / "shapes" / "shapes.yaml"
DEFAULT_SCENES = ASSETS / "shapes" / "val" / "images"
DEFAULT_TARGET = "onnxruntime"


def default_bundle_dir(model: Path, target: str, precision: str, split: bool = True) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.stem)
    if model.suffix.lower() != ".onnx":  # m.pt and m.onnx make different bundles: m-pt_..., m_...
        stem += "-" + re.sub(r"[^A-Za-z0-9]+", "", model.suffix.lower()) if model.suffix else ""
    return Path("bundles") / f"{stem}_{target}_{precision}{'' if split else '_nosplit'}"
