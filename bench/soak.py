"""Soak run: a generated video of N frames through `run_pipeline` with every sink, sampling RSS.

    python bench/soak.py BUNDLE --frames 10000

Prints RSS every 500 frames and the growth between the first sample after warm-up and the end;
a flat line is the goal (an unattended device runs for weeks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edgeseg.defaults import ASSETS
from edgeseg.runtime.model import Model
from edgeseg.runtime.pipeline import run_pipeline
from edgeseg.runtime.sinks import JsonlSink, VideoSink
from edgeseg.runtime.sources import open_source


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_video(path: Path, frames: int, size=(320, 240)) -> None:
    imgs = [cv2.resize(cv2.imread(str(f)), size) for f in sorted((ASSETS / "shapes" / "val" / "images").iterdir())]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for i in range(frames):
        w.write(np.roll(imgs[(i // 10) % len(imgs)], i % 10, axis=1))
    w.release()


def soak(bundle: Path, frames: int, every: int = 500) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="edgeseg-soak-"))
    try:
        video = tmp / "soak.mp4"
        make_video(video, frames)
        model = Model.load(bundle)
        samples: list[tuple[int, float]] = []

        def on_frame(st, fr, res):
            if st.frames % every == 0:
                samples.append((st.frames, round(rss_mb(), 1)))

        src = open_source(str(video))
        st = run_pipeline(model, src, [VideoSink(tmp / "out.mp4", 30), JsonlSink(tmp / "out.jsonl", "soak")],
                          on_frame=on_frame)
        lines = sum(1 for _ in open(tmp / "out.jsonl"))
        base = samples[1][1] if len(samples) > 1 else samples[0][1]
        return {"frames": st.frames, "jsonl_lines": lines, "fps": round(st.fps, 1), "rss_samples_mb": samples,
                "rss_growth_after_warmup_mb": round(samples[-1][1] - base, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--frames", type=int, default=10000)
    a = ap.parse_args()
    print(json.dumps(soak(a.bundle, a.frames), indent=1))


if __name__ == "__main__":
    main()
