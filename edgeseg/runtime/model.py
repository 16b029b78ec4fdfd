"""The Python API: a loaded bundle you call on frames, as an Ultralytics model is called.

    import edgeseg
    model = edgeseg.load("bundles/shapes-yolo11n-seg_onnxruntime_int8")
    result = model(frame_bgr)            # or a path, or a list of either (-> a list)
    result.plot()                        # the annotated frame; result.to_json(): the --json record
    for frame, result in model.stream("video.mp4"): ...   # camera index, video, folder, glob, URL
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..errors import EdgesegError
from .backends import Backend, open_backend
from .decode import FrameResult, make_decoder
from .preprocess import InputSpec, Letterbox, preprocess
from .sources import Source

Image = np.ndarray | str | os.PathLike  # a BGR frame, or an image file


@dataclass
class Result(FrameResult):
    """A :class:`FrameResult` that keeps its frame, as Ultralytics' ``Results`` keeps ``orig_img``:
    ``plot()`` draws on it and ``to_json()`` gives the ``--json`` record of it."""

    image: np.ndarray | None = field(default=None, repr=False)
    source: str = ""
    index: int = 0
    time: float = 0.0

    @classmethod
    def of(cls, res: FrameResult, image: np.ndarray, source: str = "", index: int = 0,
           capture_time: float | None = None) -> Result:
        return cls(**{f.name: getattr(res, f.name) for f in fields(res)}, image=image, source=source, index=index,
                   time=time.time() if capture_time is None else capture_time)

    def plot(self, **draw_options: Any) -> np.ndarray:
        """The frame with masks, boxes and labels drawn (a new BGR array; see ``edgeseg.draw``)."""
        from .draw import draw

        if self.image is None:
            raise EdgesegError("this result holds no frame to draw on; use edgeseg.draw(frame, result)")
        return draw(self.image, self, **draw_options)

    def to_json(self) -> dict:
        """The record ``edgeseg run --json`` writes for this frame (masks as COCO RLE)."""
        from .sinks import result_record
        from .sources import Frame

        return result_record(Frame(self.index, self.image, self.time, self.source), self, self.source)


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
        self.input = InputSpec.from_dict(m.input)
        self.layout, self.dtype = self.input.layout, self.input.dtype
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
        return preprocess(frame_bgr, self.input)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.backend.run(x)
        if not getattr(self, "_outputs_checked", False):  # once: a model file swapped under a rewritten manifest
            from ..bundle import check_outputs

            check_outputs(self.bundle, outs)
            self._outputs_checked = True
        return outs

    def decode(self, outputs: dict[str, np.ndarray], lb: Letterbox) -> FrameResult:
        t = self.thresholds
        return self.decoder(outputs, lb, conf=t.conf, iou=t.iou, classes=t.classes, max_det=t.max_det)

    def __call__(self, source: Image | list[Image]) -> Result | list[Result]:
        """Results for a BGR frame (HxWx3 uint8) or an image file; a list of either gives a list.
        A folder, glob, video or camera: ``model.stream(...)``."""
        if isinstance(source, (list, tuple)):
            return [self(s) for s in source]
        if isinstance(source, np.ndarray):
            return Result.of(self.predict(source), source)
        if isinstance(source, (str, os.PathLike)):
            from .sources import VIDEO_SUFFIXES, read_image

            p = Path(source)
            if p.is_dir() or (not p.exists() and any(ch in str(p) for ch in "*?[")) or (
                    p.suffix.lower() in VIDEO_SUFFIXES) or "://" in str(source):
                raise EdgesegError(f"{source}: many frames; iterate over model.stream({str(source)!r}) "
                                   "(a folder, glob, video, URL or camera)")
            if not p.is_file():
                raise EdgesegError(f"{source}: no such image file")
            frame = read_image(p)
            return Result.of(self.predict(frame), frame, source=str(source))
        raise EdgesegError(f"model(x): x is a {type(source).__name__}; pass a BGR numpy array (HxWx3 uint8), "
                           "an image path, or a list of them")

    def predict(self, frame_bgr: np.ndarray) -> FrameResult:
        """One frame through preprocessing, the runtime and decoding (timed in ``last_timing``)."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise EdgesegError(f"model(frame): expected a BGR image of shape HxWx3, got shape {frame_bgr.shape}")
        t0 = time.perf_counter()
        x, lb = self.preprocess(frame_bgr)
        t1 = time.perf_counter()
        outs = self.infer(x)
        t2, c2 = time.perf_counter(), time.thread_time()
        res = self.decode(outs, lb)
        t3, c3 = time.perf_counter(), time.thread_time()
        # decode's CPU time too: on a loaded machine wall time also counts the waits for a core
        self.last_timing = Timing((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, {"decode_cpu_ms": (c3 - c2) * 1e3})
        return res

    def open_source(self, spec: str | int | os.PathLike, width: int | None = None, height: int | None = None,
                    fps: float | None = None, fourcc: str | None = None,
                    on_event: Callable[[str], None] | None = None) -> Source:
        """The frames this model runs on, opened as ``edgeseg run`` opens them: a camera index or
        ``"pi"`` (camera 0 is the Raspberry Pi camera when there is one; a bundle whose runtime is
        the camera itself, the IMX500, opens that camera), a video, an image, a folder, a glob or
        an rtsp:// / http:// URL. ``on_event`` hears of reconnects and fallbacks on live sources."""
        from .sources import open_source

        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        camera = isinstance(spec, int) or spec == "pi" or (isinstance(spec, str) and spec.isdigit())
        sensor_camera = getattr(self.backend, "camera", None)  # a camera that runs the network (IMX500)
        if camera and sensor_camera is not None:
            return sensor_camera(self.bundle, width, height, fps, on_event=on_event,
                                 aspect=self.manifest.profile.get("runtime_options", {}).get("aspect", "preserve"))
        kw: dict[str, Any] = {}
        if camera and str(spec) == "0":
            kw["prefer_pi"] = True
        if camera and fourcc:
            kw["fourcc"] = fourcc
        if on_event is not None and (camera or "://" in str(spec)):
            kw["on_event"] = on_event
        return open_source(spec, width, height, fps, **kw)

    def stream(self, source: str | int | os.PathLike, track: bool | dict = False,
               **source_options: Any) -> Iterator[tuple[np.ndarray, Result]]:
        """Frames of ``source`` with their results, in order: a camera index or "pi", a video, a
        folder, a glob or a URL (``source_options``: width, height, fps, fourcc, on_event).
        ``track``: give each instance a ``track_id`` (a dict: tracker options, see track.py)."""
        from contextlib import nullcontext

        src = self.open_source(source, **source_options)
        tracking = None
        if track:
            from .track import tracking_for

            tracking = tracking_for(self, src, **(track if isinstance(track, dict) else {}))
        with src, (tracking or nullcontext()):
            for item in src:
                res = (self.decode(item.outputs, item.mapping) if item.outputs is not None
                       else self.predict(item.image))
                res = Result.of(res, item.image, item.name or src.name, item.index, item.time)
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
