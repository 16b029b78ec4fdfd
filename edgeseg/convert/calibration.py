"""Calibration set: which images, in which order, preprocessed exactly as the runtime does.

Kept apart from every quantizer (as onnxruntime separates its CalibrationDataReader from
``quantize_static``): a toolchain asks for arrays or for file paths, never reads images itself.
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..data import list_images, load_dataset
from ..errors import EdgesegError
from ..runtime.preprocess import InputSpec, fit, preprocess
from ..runtime.replay import input_digest
from ..runtime.sources import VIDEO_SUFFIXES, read_image

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
        frames_dir = None
        if p.suffix.lower() in (".yaml", ".yml"):
            files = load_dataset(p, split="train").images
        elif p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            # a recording of the deployment scenes: evenly spaced frames, gone when the set is
            from ..bundle import work_dir

            frames_dir = work_dir("calib")  # named so that a later conversion removes it after a kill -9
            try:
                files = video_frames(p, n + holdout, frames_dir)
            except BaseException:
                shutil.rmtree(frames_dir, ignore_errors=True)
                raise
        else:
            files = list_images(p)
        if len(files) < min_images:
            if frames_dir is not None:
                shutil.rmtree(frames_dir, ignore_errors=True)
                raise EdgesegError(f"{p}: the video has {len(files)} frames, INT8 calibration needs at least "
                                   f"{min_images}; pass a longer recording or a folder of images")
            raise EdgesegError(f"{p}: found {len(files)} images, INT8 calibration needs at least {min_images} "
                               f"({DEFAULT_IMAGES} recommended); "
                               "add images of the deployment scenes or convert with --fp32")
        rng = np.random.default_rng(SEED)
        order = rng.permutation(len(files))
        n_cal = min(n, len(files) - min(holdout, max(len(files) - min_images, 0)))
        cal = sorted(files[i] for i in order[:n_cal])
        held = sorted(files[i] for i in order[n_cal:n_cal + holdout])
        cset = cls(str(p), cal, held, len(files))
        if frames_dir is not None:
            weakref.finalize(cset, shutil.rmtree, frames_dir, True)
        return cset

    def arrays(self, input_hw: InputSpec | tuple[int, int], layout: str | None = None, dtype: str | None = None,
               which: str = "images", progress: bool = True) -> Iterator[np.ndarray]:
        """Model inputs for each image, through the runtime's own preprocessing (``input_hw``: the
        model's InputSpec; layout and dtype, when given, replace its own)."""
        paths = self.images if which == "images" else self.holdout
        it: object = paths
        if progress:
            from ..progress import track
            it = track(paths, "calibration" if which == "images" else "held-back images")
        for p in it:  # type: ignore[attr-defined]
            x, _ = preprocess(read_image(p), input_hw, layout, dtype)
            yield x

    def save_arrays(self, folder: Path, input_hw: InputSpec | tuple[int, int], layout: str | None = None,
                    dtype: str | None = None, batch: bool = True) -> Path:
        """Calibration inputs as .npy files for a toolchain in another process; returns the list file.
        ``batch=False`` drops the leading batch axis, for tools that read one [C,H,W] image per file."""
        files = [f for f, _ in save_inputs(self.images, folder, input_hw, layout, dtype, "cal", batch)]
        listing = folder / "calibration.txt"
        listing.write_text("\n".join(str(f) for f in files) + "\n")
        return listing

    def save_images(self, folder: Path, input_hw: InputSpec | tuple[int, int]) -> list[Path]:
        """Resized (letterboxed) calibration images as PNG, for vendor tools that read and normalise
        images themselves: lossless, so they see exactly the pixels the runtime feeds."""
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, p in enumerate(self.images):
            img, _ = fit(read_image(p), input_hw)
            files.append(folder / f"{i:05d}.png")
            cv2.imwrite(str(files[-1]), img)
        return files

    def check_readable(self) -> None:
        for p in self.images + self.holdout:
            read_image(p)

    def summary(self) -> dict:
        return {"source": self.source, "available": self.available, "used": len(self.images),
                "holdout": len(self.holdout), "sampling": f"seeded permutation (seed {SEED})",
                "preprocess": "edgeseg.runtime.preprocess.preprocess (the manifest's input spec)"}


class ArrayReader:
    """onnxruntime's CalibrationDataReader protocol over calibration arrays (ORT's INT8, MNN's ranges)."""

    def __init__(self, input_name: str, arrays: Iterable[np.ndarray]):
        self._it = iter(arrays)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self._name: x}


def save_inputs(paths: Sequence[Path], folder: Path, input_hw: InputSpec | tuple[int, int], layout: str | None = None,
                dtype: str | None = None, tag: str = "in", batch: bool = True) -> list[tuple[Path, str]]:
    """Preprocess each image as the runtime does and save it as .npy; returns (file, input digest),
    the digest keying outputs a simulator records for that exact input."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(paths):
        x, _ = preprocess(read_image(p), input_hw, layout, dtype)
        f = folder / f"{tag}{i:05d}.npy"
        np.save(f, x if batch else np.ascontiguousarray(x[0]))
        out.append((f, input_digest(x)))
    return out


def video_frames(video: Path, count: int, folder: Path) -> list[Path]:
    """``count`` frames spread evenly over ``video``, written to ``folder`` as lossless PNG."""
    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            raise EdgesegError(f"{video}: OpenCV cannot open this video; re-encode it as H.264 MP4 or pass a "
                               "folder of images")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:  # some containers do not say: count by reading
            while cap.grab():
                total += 1
            cap.release()
            cap = cv2.VideoCapture(str(video))
        keep = set(np.linspace(0, max(total - 1, 0), min(count, total)).round().astype(int).tolist())
        out: list[Path] = []
        i = 0
        while len(out) < len(keep):
            ok, frame = cap.read()
            if not ok:
                break
            if i in keep:
                out.append(folder / f"{video.stem}_{i:07d}.png")
                cv2.imwrite(str(out[-1]), frame)
            i += 1
        return out
    finally:
        cap.release()
