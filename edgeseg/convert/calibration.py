"""Calibration set: which images, in which order, preprocessed exactly as the runtime does.

Kept apart from every quantizer (as onnxruntime separates its CalibrationDataReader from
``quantize_static``): a toolchain asks for arrays or for file paths, never reads images itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import list_images, load_dataset
from ..errors import EdgesegError
from ..runtime.preprocess import preprocess
from ..runtime.sources import read_image

MIN_IMAGES = 8
DEFAULT_IMAGES = 64
DEFAULT_HOLDOUT = 8
SEED = 0


@dataclass
class CalibrationSet:
    """A deterministic sample of images: ``images`` for calibration, ``holdout`` for the fidelity check."""

    source: str
    images: list[Path]
    holdout: list[Path] = field(default_factory=list)
    available: int = 0

    @classmethod
    def from_path(cls, path: str | Path, n: int = DEFAULT_IMAGES, holdout: int = DEFAULT_HOLDOUT,
                  min_images: int = MIN_IMAGES) -> CalibrationSet:
        p = Path(path)
        if p.suffix.lower() in (".yaml", ".yml"):
            files = load_dataset(p, split="train").images
        else:
            files = list_images(p)
        if len(files) < min_images:
            raise EdgesegError(f"{p}: found {len(files)} images, INT8 calibration needs at least {min_images} "
                               f"({DEFAULT_IMAGES} recommended); add images of the deployment scenes or convert with --fp32")
        rng = np.random.default_rng(SEED)
        order = rng.permutation(len(files))
        n_cal = min(n, len(files) - min(holdout, max(len(files) - min_images, 0)))
        cal = sorted(files[i] for i in order[:n_cal])
        held = sorted(files[i] for i in order[n_cal:n_cal + holdout])
        return cls(str(p), cal, held, len(files))

    def arrays(self, input_hw: tuple[int, int], layout: str = "nchw", dtype: str = "float32",
               which: str = "images", progress: bool = True) -> Iterator[np.ndarray]:
        """Model inputs for each image, through the runtime's own preprocessing."""
        paths = self.images if which == "images" else self.holdout
        it: object = paths
        if progress:
            from rich.progress import track
            it = track(paths, description=f"calibration ({len(paths)} images)", transient=True)
        for p in it:  # type: ignore[attr-defined]
            x, _ = preprocess(read_image(p), input_hw, layout, dtype)
            yield x

    def check_readable(self) -> None:
        for p in self.images + self.holdout:
            read_image(p)

    def summary(self) -> dict:
        return {"source": self.source, "available": self.available, "used": len(self.images),
                "holdout": len(self.holdout), "sampling": f"seeded permutation (seed {SEED})",
                "preprocess": "edgeseg.runtime.preprocess.preprocess (letterbox 114, RGB, /255)"}
