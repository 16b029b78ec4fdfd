"""Decode cost on a dense frame at a very low --conf: time and peak memory of one bundle's decoder.

    python bench/dense_decode.py BUNDLE [--conf 0.01] [--grid 4] [--max-det 300] [--repeat 20]

The frame is a GRID x GRID mosaic of the reference scenes (dozens of objects), so that at
conf 0.01 nearly every anchor is a candidate and hundreds of instances are kept: the case where
an n x n NMS matrix once took seconds and gigabytes. Prints candidates, kept instances, decode
ms (median and max, wall and CPU time) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.runtime.model import Model
from edgeseg.runtime.sources import read_image

SCENES = Path(__file__).resolve().parent.parent / "edgeseg" / "assets" / "shapes" / "val" / "images"


def mosaic(grid: int, size: int = 320) -> np.ndarray:
    tiles = [cv2.resize(read_image(p), (size, size)) for p in sorted(SCENES.glob("*.jpg"))[:grid * grid]]
    return np.concatenate([np.concatenate(tiles[r * grid:(r + 1) * grid], 1) for r in range(grid)], 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--conf", type=float, default=0.01)
    ap.add_argument("--iou", type=float, default=0.7)
    ap.add_argument("--max-det", type=int, default=300)
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    model = Model.load(a.bundle)
    frame = mosaic(a.grid)
    x, lb = model.preprocess(frame)
    outs = model.infer(x)
    cand = model.decoder.candidates(outs, a.conf, None, a.max_det)
    n_cand = 0 if cand is None else len(cand[1])
    times, cpu, res = [], [], None
    for _ in range(a.repeat):
        t, c = time.perf_counter(), time.process_time()
        res = model.decoder(outs, lb, conf=a.conf, iou=a.iou, max_det=a.max_det)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{a.bundle}: frame {frame.shape[1]}x{frame.shape[0]} -> {model.input_hw[1]}x{model.input_hw[0]}, "
          f"conf {a.conf}: {n_cand} candidates, {len(res.instances)} instances kept (max-det {a.max_det}); "
          f"decode median {statistics.median(times):.1f} ms, max {max(times):.1f} ms (CPU time median "
          f"{statistics.median(cpu):.1f} ms: on a shared machine wall time includes waiting); peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
