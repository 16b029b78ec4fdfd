"""The concurrent run loop: capture (+ preprocess for files) | inference | decode + sinks, bounded queues.

On a live source the capture stage never waits: when inference is behind, the oldest queued
frame is dropped (and counted), so the sensor's buffer never fills and results stay fresh. On a
file or folder every frame is processed and the capture stage simply waits. OpenCV and the
runtimes release the GIL, so the three stages overlap on a multi-core board.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decode import FrameResult
from .draw import draw, draw_text
from .model import Model
from .sinks import Sink
from .sources import Frame, Source

_END = object()
CAPTURE_JOIN_S = 5.0  # how long the end of a run waits for a capture thread stuck in a read


@dataclass
class RunStats:
    frames: int = 0
    dropped: int = 0
    elapsed_s: float = 0.0
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {"preprocess": [], "inference": [], "decode": []})
    error: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def median(self, stage: str, last: int | None = None) -> float:
        v = self.stage_ms[stage][-last:] if last else self.stage_ms[stage]
        return float(np.median(v)) if v else 0.0

    def summary(self) -> dict:
        return {"frames": self.frames, "dropped": self.dropped, "elapsed_s": round(self.elapsed_s, 3),
                "fps": round(self.fps, 2), **{f"{k}_ms": round(self.median(k), 3) for k in self.stage_ms}}


def _put_latest(q: queue.Queue, item: object) -> bool:
    """Put without blocking; if full, drop the oldest item. Returns True when one was dropped."""
    dropped = False
    while True:
        try:
            q.put_nowait(item)
            return dropped
        except queue.Full:
            try:
                q.get_nowait()
                dropped = True
            except queue.Empty:
                pass


def run_pipeline(model: Model, source: Source, sinks: list[Sink], *, annotate: bool = True,
                 max_frames: int | None = None, on_frame: Callable[[RunStats, Frame, FrameResult], None] | None = None,
                 stop: threading.Event | None = None, queue_size: int = 2,
                 fps_overlay: Collection[Sink] = (), tracking: Any = None) -> RunStats:
    """Run ``source`` through ``model`` into ``sinks`` until the source ends, ``stop`` is set or
    ``max_frames`` frames are written. Ctrl-C stops cleanly; sinks are always closed.

    The sinks in ``fps_overlay`` (live views: a window, a browser) get the annotated frame with
    the FPS figure written on it; the others (saved files) get it without. ``tracking``: a
    :class:`~edgeseg.runtime.track.Tracking` (``--track``), called on each result in capture order
    before it is drawn or written."""
    stats = RunStats()
    stop = stop or threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=queue_size)
    q_out: queue.Queue = queue.Queue(maxsize=queue_size)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def capture() -> None:
        try:
            for fr in source:
                if stop.is_set():
                    break
                if source.live:
                    if _put_latest(q_in, fr):
                        with lock:
                            stats.dropped += 1
                else:
                    # every frame of a file is processed, so it is letterboxed here, overlapping the
                    # inference of the one before: the inference stage then only infers (a live frame
                    # may yet be dropped, and is letterboxed by the inference stage instead)
                    item = (fr, *_timed(model.preprocess, fr.image)) if fr.outputs is None else fr
                    while not stop.is_set():
                        try:
                            q_in.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            _put_end(q_in, stop)

    def infer() -> None:
        try:
            while not stop.is_set():
                try:
                    fr = q_in.get(timeout=0.1)  # not forever: a stuck camera read never sends _END
                except queue.Empty:
                    continue
                if fr is _END or stop.is_set():
                    break
                pre_ms = 0.0
                if isinstance(fr, tuple):  # letterboxed by the capture stage
                    fr, (x, lb), pre_ms = fr
                elif fr.outputs is None:
                    (x, lb), pre_ms = _timed(model.preprocess, fr.image)
                t1 = time.perf_counter()
                if fr.outputs is not None:  # the camera ran the network (IMX500)
                    outs, lb = fr.outputs, fr.mapping
                else:
                    outs = model.infer(x)
                t2 = time.perf_counter()
                while not stop.is_set():
                    try:
                        q_out.put((fr, lb, outs, pre_ms, (t2 - t1) * 1e3), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            _put_end(q_out, stop)

    capturing = threading.Thread(target=capture, name="edgeseg-capture", daemon=True)
    inferring = threading.Thread(target=infer, name="edgeseg-infer", daemon=True)
    threads = [capturing, inferring]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        while True:
            item = q_out.get()
            if item is _END:
                break
            fr, lb, outs, pre_ms, inf_ms = item
            t0 = time.perf_counter()
            res = model.decode(outs, lb)
            dec_ms = (time.perf_counter() - t0) * 1e3
            stats.frames += 1
            stats.stage_ms["preprocess"].append(pre_ms)
            stats.stage_ms["inference"].append(inf_ms)
            stats.stage_ms["decode"].append(dec_ms)
            if tracking is not None:
                tracking(fr, res)
                stats.stage_ms.setdefault("track", []).append(tracking.last_ms)
            for k in stats.stage_ms:  # bounded memory on week-long runs
                if len(stats.stage_ms[k]) > 4096:
                    del stats.stage_ms[k][:2048]
            stats.elapsed_s = time.perf_counter() - t_start
            annotated = draw(fr.image, res) if annotate else None
            if annotated is not None and tracking is not None:
                tracking.draw(annotated)
            with_fps = None
            for s in sinks:
                if annotated is not None and s in fps_overlay:
                    if with_fps is None:
                        with_fps = draw_text(annotated.copy(), f"{stats.fps:.1f} FPS")
                    s.write(fr, res, with_fps)
                else:
                    s.write(fr, res, annotated)
            if on_frame:
                on_frame(stats, fr, res)
            if (max_frames and stats.frames >= max_frames) or any(getattr(s, "quit", False) for s in sinks):
                break
            if sinks and all(getattr(s, "stopped", False) for s in sinks):  # e.g. the disk filled up
                break
    except KeyboardInterrupt:
        stats.error = "interrupted"
    finally:
        stop.set()
        source.close()
        _drain(q_in)
        _drain(q_out)
        capturing.join(timeout=CAPTURE_JOIN_S)  # a camera read can block; that thread is left behind
        # the inference in flight always finishes first: the caller closes the runtime next, and
        # ncnn (or an NPU driver) freed under a running inference crashes the process (a slow
        # frame, e.g. fp16 ncnn on a small board, outlasted a timed wait here)
        inferring.join()
        stats.elapsed_s = time.perf_counter() - t_start
        for s in sinks:
            s.close()
    if errors and stats.error is None:
        raise errors[0]
    return stats


def _timed(fn: Callable, *a: object) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*a)
    return out, (time.perf_counter() - t0) * 1e3


def _put_end(q: queue.Queue, stop: threading.Event) -> None:
    """Queue the end marker behind every frame; only once the run is stopping (the consumer may
    be gone) does it make room by discarding what is queued."""
    while True:
        try:
            q.put(_END, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return

