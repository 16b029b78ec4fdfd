"""``edgeseg bench``: per-stage latency one frame at a time, then the concurrent pipeline's FPS."""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import EdgesegError
from .model import Model
from .pipeline import run_pipeline
from .sources import Source, open_source


def _stats(v: list[float]) -> dict:
    a = np.asarray(v)
    return {"median": round(float(np.median(a)), 3), "p90": round(float(np.percentile(a, 90)), 3)}


class _Frames(Source):
    """Frames held in memory, so that disk and JPEG decoding do not enter the figures."""

    def __init__(self, frames: list[np.ndarray], repeat: int):
        self.frames, self.repeat, self.name = frames, repeat, "memory"

    def __iter__(self):
        from .sources import Frame

        for i in range(self.repeat):
            yield Frame(i, self.frames[i % len(self.frames)], time.time(), f"{i}")


def peak_rss_mb() -> float:
    """This process's own peak. Linux's ru_maxrss carries the parent's peak across fork and exec (a
    bench row started by a converting parent would report the parent's), VmHWM does not."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def bench(model: Model, source: str | Path, frames: int = 100, warmup: int = 10, pipeline_frames: int | None = None,
          max_images: int = 50, track: bool = False) -> dict:
    """Per-stage figures; ``track``: the tracker runs on every frame as in ``run --track`` (the
    decoder keeps its low scores too), its time inside end_to_end_ms and the pipeline's FPS."""
    src = open_source(str(source))
    images: list[np.ndarray] = []
    with src:
        for fr in src:
            images.append(fr.image)
            if len(images) >= max_images:
                break
    if not images:
        raise EdgesegError(f"{source}: no frames to time; pass --source with images or a video")
    for i in range(warmup):
        model(images[i % len(images)])
    pre, inf, dec, dec_cpu, e2e, ninst, trk = [], [], [], [], [], [], []
    tracking = _tracking(model) if track else None
    for i in range(frames):
        img = images[i % len(images)]
        t0 = time.perf_counter()
        res = model(img)
        if tracking is not None:
            tracking.update(res, time.time(), i)
            trk.append(tracking.last_ms)
        e2e.append((time.perf_counter() - t0) * 1e3)
        t = model.last_timing
        pre.append(t.preprocess_ms)
        inf.append(t.inference_ms)
        dec.append(t.decode_ms)
        dec_cpu.append(t.extra.get("decode_cpu_ms", t.decode_ms))
        ninst.append(len(res.instances))
    st = run_pipeline(model, _Frames(images, pipeline_frames or frames), [], annotate=False, tracking=tracking)
    inf_s = _stats(inf)
    return _track_figures(tracking, trk) | {
        "bundle": str(model.bundle.path), "target": model.manifest.target, "precision": model.manifest.precision,
        "backend": model.backend.name,  # what actually ran: e.g. litert+edgetpu, or a host replay
        "frames": frames, "frame_size": list(images[0].shape[:2][::-1]),
        "preprocess_ms": _stats(pre), "inference_ms": inf_s, "decode_ms": _stats(dec), "end_to_end_ms": _stats(e2e),
        "decode_ms_max": round(float(np.max(dec)), 3), "decode_cpu_ms": _stats(dec_cpu),
        "instances_max": int(np.max(ninst)),
        "instances_mean": round(float(np.mean(ninst)), 2),
        # the runtime's own share of a frame: everything but the backend's inference
        "overhead_ms": _stats([e - i for e, i in zip(e2e, inf)]),
        "overhead_vs_inference": round(float(np.median(np.subtract(e2e, inf) / np.asarray(inf))), 3),
        "pipeline_fps": round(st.fps, 2),
        "pipeline_vs_inference_bound": round(st.fps / (1000.0 / inf_s["median"]), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_threads(open_model: Callable[[int | None], Model], source: str | Path, counts: Sequence[int | None] = (1, 2),
                  frames: int = 100, track: bool = False) -> dict:
    """:func:`bench` once per inference thread count (``open_model(n)`` loads the bundle with ``n``
    threads); the result is the run with the highest pipeline FPS, with every count's figures under
    ``"threads"`` and the winner under ``"best_threads"``."""
    runs: dict[str, dict] = {}
    best: dict | None = None
    for n in counts:
        model = open_model(n)
        try:
            r = bench(model, source, frames=frames, track=track)
        finally:
            model.close()
            # gone before the next count's session loads: two sessions at once were 40 MB of the peak
            del model
            gc.collect()
        runs[str(n or "default")] = {k: r[k] for k in ("inference_ms", "end_to_end_ms", "pipeline_fps",
                                                       "pipeline_vs_inference_bound")}
        if best is None or r["pipeline_fps"] > best["pipeline_fps"]:
            best = dict(r, best_threads=n)
    assert best is not None, "no thread count to time"
    best["threads"] = runs
    best["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return best


def _tracking(model: Model):
    from .track import tracking_for

    return tracking_for(model)


def _track_figures(tracking, track_ms: list[float]) -> dict:
    if tracking is None:
        return {}
    from .track import bench_figures

    tracking.close()  # the model's own threshold back
    return bench_figures(track_ms)


def thread_counts() -> list[int]:
    """1 and 2 inference threads (the pipeline's own threads need cores too), and every core on a
    bigger board, capped: beyond 4 a CPU backend rarely gains on a 320-640 px model."""
    n = os.cpu_count() or 1
    return sorted({c for c in (1, 2, min(n, 4)) if c <= n})


__all__ = ["bench", "bench_threads", "thread_counts"]
