"""Calibration set: which images, in which order, preprocessed exactly as the runtime does.

Kept apart from every quantizer (as onnxruntime separates its CalibrationDataReader from
``quantize_static``): a toolchain asks for arrays or for file paths, never reads images itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..data import list_images, load_dataset
from ..errors import EdgesegError
from ..runtime.preprocess import letterbox, preprocess
from ..runtime.replay import input_digest
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

    def save_arrays(self, folder: Path, input_hw: tuple[int, int], layout: str = "nchw",
                    dtype: str = "float32") -> Path:
        """Calibration inputs as .npy files for a toolchain in another process; returns the list file."""
        files = [f for f, _ in save_inputs(self.images, folder, input_hw, layout, dtype, "cal")]
        listing = folder / "calibration.txt"
        listing.write_text("\n".join(str(f) for f in files) + "\n")
        return listing

    def save_images(self, folder: Path, input_hw: tuple[int, int]) -> list[Path]:
        """Letterboxed calibration images as PNG, for vendor tools that read and normalise images
        themselves: lossless, so they see exactly the pixels the runtime feeds."""
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, p in enumerate(self.images):
            img, _ = letterbox(read_image(p), input_hw)
            files.append(folder / f"{i:05d}.png")
            cv2.imwrite(str(files[-1]), img)
        return files

    def check_readable(self) -> None:
        for p in self.images + self.holdout:
            read_image(p)

    def summary(self) -> dict:
        return {"source": self.source, "available": self.available, "used": len(self.images),
                "holdout": len(self.holdout), "sampling": f"seeded permutation (seed {SEED})",
                "preprocess": "edgeseg.runtime.preprocess.preprocess (letterbox 114, RGB, /255)"}


def save_inputs(paths: Sequence[Path], folder: Path, input_hw: tuple[int, int], layout: str = "nchw",
                dtype: str = "float32", tag: str = "in") -> list[tuple[Path, str]]:
    """Preprocess each image as the runtime does and save it as .npy; returns (file, input digest),
    the digest keying outputs a simulator records for that exact input."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(paths):
        x, _ = preprocess(read_image(p), input_hw, layout, dtype)
        f = folder / f"{tag}{i:05d}.npy"
        np.save(f, x)
        out.append((f, input_digest(x)))
    return out
