"""Recorded outputs of a model that cannot run on this host (an NPU or sensor network).

A toolchain that can execute the converted model only inside its own tools (RKNN's simulator,
MCT's fake-quantized ONNX in the IMX500 environment) records the outputs for chosen inputs at
conversion, under ``~/.cache/edgeseg/sim/<model digest>/<input digest>.npz``. ``edgeseg eval``
then replays them through edgeseg's own decoder, so the score is of exactly what the vendor's
tool computed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import EdgesegError


def cache_root() -> Path:
    return Path(os.environ.get("EDGESEG_CACHE", Path.home() / ".cache" / "edgeseg"))


def input_digest(x: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(x).tobytes() + str(x.shape).encode()).hexdigest()


def sim_dir(model_sha: str) -> Path:
    return cache_root() / "sim" / model_sha[:16]


def record(model_sha: str, x_digest: str, outputs: dict[str, np.ndarray]) -> None:
    d = sim_dir(model_sha)
    d.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(d / f"{x_digest}.npz", **outputs)


class Replay:
    """The recorded outputs, looked up by the input's digest."""

    def __init__(self, model_sha: str, how: str = "convert again with --verify-data DATASET.yaml to record its images",
                 where: Path | None = None):
        self.dir = sim_dir(model_sha)
        self.how = how
        self.where = where or self.dir

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        f = self.dir / f"{input_digest(x)}.npz"
        if not f.is_file():
            raise EdgesegError(f"{self.where}: no output was recorded for this frame at conversion; {self.how}")
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
