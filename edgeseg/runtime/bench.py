"""``edgeseg bench``: per-stage latency one frame at a time, then the concurrent pipeline's FPS."""

from __future__ import annotations

import resource
import sys
import time
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
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def bench(model: Model, source: str | Path, frames: int = 100, warmup: int = 10, pipeline_frames: int | None = None,
          max_images: int = 50) -> dict:
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
    pre, inf, dec, e2e, ninst = [], [], [], [], []
    for i in range(frames):
        img = images[i % len(images)]
        t0 = time.perf_counter()
        res = model(img)
        e2e.append((time.perf_counter() - t0) * 1e3)
        t = model.last_timing
        pre.append(t.preprocess_ms)
        inf.append(t.inference_ms)
        dec.append(t.decode_ms)
        ninst.append(len(res.instances))
    st = run_pipeline(model, _Frames(images, pipeline_frames or frames), [], annotate=False)
    inf_s = _stats(inf)
    return {
        "bundle": str(model.bundle.path), "target": model.manifest.target, "precision": model.manifest.precision,
        "backend": model.backend.name,  # what actually ran: e.g. litert+edgetpu, or a host replay
        "frames": frames, "frame_size": list(images[0].shape[:2][::-1]),
        "preprocess_ms": _stats(pre), "inference_ms": inf_s, "decode_ms": _stats(dec), "end_to_end_ms": _stats(e2e),
        "decode_ms_max": round(float(np.max(dec)), 3), "instances_max": int(np.max(ninst)),
        "instances_mean": round(float(np.mean(ninst)), 2),
        "pipeline_fps": round(st.fps, 2),
        "pipeline_vs_inference_bound": round(st.fps / (1000.0 / inf_s["median"]), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


__all__ = ["bench"]
