"""The Python API: a loaded bundle you call on frames.

    import edgeseg
    model = edgeseg.load("bundles/shapes-yolo11n-seg_onnxruntime_int8")
    result = model(frame_bgr)            # FrameResult: instances with boxes, scores, masks
    for frame, result in model.stream("video.mp4"): ...
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..errors import EdgesegError
from .backends import Backend, open_backend
from .decode import FrameResult, make_decoder
from .preprocess import Letterbox, preprocess


@dataclass
class Thresholds:
    """Ultralytics' defaults, so that results compare with the reference implementation."""

    conf: float = 0.25
    iou: float = 0.7
    classes: list[int] | None = None
    max_det: int = 300


@dataclass
class Timing:
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    decode_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Model:
    """A bundle with its backend and decoder. Thread-compatible: one call at a time per stage."""

    def __init__(self, bundle: Bundle, backend: Backend, thresholds: Thresholds | None = None):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend
        self.thresholds = thresholds or Thresholds()
        m = self.manifest
        self.input_hw = m.input_hw
        self.layout = m.input.get("layout", "nchw")
        self.dtype = m.input.get("dtype", "float32")
        self.decoder = make_decoder(m.head, m.outputs, m.names, self.input_hw)
        self.names = m.names
        self.last_timing = Timing()

    @classmethod
    def load(cls, path: str | Path | Bundle, thresholds: Thresholds | None = None, **backend_options: Any) -> Model:
        bundle = path if isinstance(path, Bundle) else Bundle.load(path)
        return cls(bundle, open_backend(bundle, **backend_options), thresholds)

    def class_ids(self, classes: Iterable[int | str]) -> list[int]:
        """Class ids from ids or names (a name may also be a comma-separated list, as typed on a
        command line)."""
        ids = []
        for item in classes:
            for c in ([item] if isinstance(item, int) else [s.strip() for s in str(item).split(",") if s.strip()]):
                if (isinstance(c, int) or c.isdigit()) and 0 <= int(c) < len(self.names):
                    ids.append(int(c))
                elif c in self.names:
                    ids.append(self.names.index(c))
                else:
                    raise EdgesegError(f"classes: '{c}' is not a class of {self.bundle.path}; "
                                       f"choose from {', '.join(self.names)}")
        return ids

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return preprocess(frame_bgr, self.input_hw, self.layout, self.dtype)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.run(x)

    def decode(self, outputs: dict[str, np.ndarray], lb: Letterbox) -> FrameResult:
        t = self.thresholds
        return self.decoder(outputs, lb, conf=t.conf, iou=t.iou, classes=t.classes, max_det=t.max_det)

    def __call__(self, frame_bgr: np.ndarray) -> FrameResult:
        t0 = time.perf_counter()
        x, lb = self.preprocess(frame_bgr)
        t1 = time.perf_counter()
        outs = self.infer(x)
        t2 = time.perf_counter()
        res = self.decode(outs, lb)
        t3 = time.perf_counter()
        self.last_timing = Timing((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return res

    def stream(self, source: str | int, track: bool | dict = False,
               **source_options: Any) -> Iterator[tuple[np.ndarray, FrameResult]]:
        """Frames of ``source`` (camera index, video, folder, URL) with their results, in order.
        ``track``: give each instance a ``track_id`` (a dict: tracker options, see track.py)."""
        from contextlib import nullcontext

        from .sources import open_source

        sensor_camera = getattr(self.backend, "camera", None)  # the IMX500 runs the network in the camera
        if sensor_camera is not None and str(source).isdigit():
            src = sensor_camera(self.bundle, **source_options)
        else:
            src = open_source(source, **source_options)
        tracking = None
        if track:
            from .track import tracking_for

            tracking = tracking_for(self, src, **(track if isinstance(track, dict) else {}))
        with src, (tracking or nullcontext()):
            for item in src:
                res = self.decode(item.outputs, item.mapping) if item.outputs is not None else self(item.image)
                yield item.image, (tracking(item, res) if tracking else res)

    def track(self, frame_or_source: np.ndarray | str | int, t: float | None = None, **options: Any) -> Any:
        """Tracked results: a frame (BGR array) gives its FrameResult, tracked against the frames
        of earlier calls (``t``: its capture time in seconds, default now; ``reset=True`` starts
        over); a source gives ``stream(source, track=True)``."""
        from .track import track_frame

        if isinstance(frame_or_source, np.ndarray):
            return track_frame(self, frame_or_source, t, **options)
        return self.stream(frame_or_source, track=options or True)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
