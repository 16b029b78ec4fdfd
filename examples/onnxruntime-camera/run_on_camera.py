"""Embed edgeseg in an application: count objects per class on a live camera.

    python run_on_camera.py BUNDLE [--camera 0]     (or --camera video.mp4 / rtsp://...)
"""

from __future__ import annotations

import argparse
from collections import Counter

import edgeseg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--camera", default="0")
    ap.add_argument("--frames", type=int, default=300)
    a = ap.parse_args()
    with edgeseg.load(a.bundle) as model:  # released at the end (an NPU context, a camera-side network)
        for i, (_frame, result) in enumerate(model.stream(a.camera)):
            counts = Counter(inst.class_name for inst in result.instances)
            covered = sum(inst.area for inst in result.instances) / (result.width * result.height)
            print(f"frame {i}: {dict(counts)}  {covered:.1%} of the picture covered")
            if i + 1 >= a.frames:
                break


if __name__ == "__main__":
    main()
