"""Per-frame latency of edgeseg bundles against Ultralytics' own ONNX predict, in one run.

Needs edgeseg[host] and ultralytics (AGPL-3.0, for this comparison only) in the same environment:

    pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190 -e ".[host]"
    edgeseg convert --fp32 --out bundles/ref_fp32 && edgeseg convert --int8 --out bundles/ref_int8
    python bench/compare_ultralytics.py bundles/ref_fp32 bundles/ref_int8 [--frames 200]
    # 640 px / 80 classes (random weights, bench/make_random_yolo11n_seg.py):
    python bench/compare_ultralytics.py B_FP32 B_INT8 --model random-yolo11n-seg-640.onnx --imgsz 640

Ultralytics' figure is its own Results.speed (preprocess + inference + postprocess) for the same
ONNX file, image and thresholds. A second section times decoding alone on dense frames (2x2
mosaics of the scenes, up to ~20 instances) to check the decode budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from edgeseg.defaults import ASSETS, DEFAULT_MODEL
from edgeseg.runtime.model import Model


def _med(v):
    return round(float(np.median(v)), 2)


def mosaics(images: list[np.ndarray], n: int) -> list[np.ndarray]:
    out = []
    for k in range(n):
        tiles = [cv2.resize(images[(4 * k + j) % len(images)], (160, 160)) for j in range(4)]
        out.append(np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the ONNX the bundles were converted from")
    ap.add_argument("--imgsz", type=int, default=320)
    a = ap.parse_args()
    from ultralytics import YOLO

    files = sorted((ASSETS / "shapes" / "val" / "images").iterdir())
    images = [cv2.imread(str(f)) for f in files]
    yolo = YOLO(str(a.model), task="segment")
    # ONNX Runtime's default (spinning) thread pool, as in Ultralytics' own session: one frame at
    # a time, like for like. `edgeseg run` turns spinning off for the pipelined case.
    models = {str(b): Model.load(b, spin=True) for b in a.bundles}
    times: dict[str, list[float]] = {"ultralytics": [], **{k: [] for k in models}}
    stages: dict[str, dict[str, list[float]]] = {k: {"pre": [], "inf": [], "post": []} for k in times}
    # Runners take turns in blocks of frames: machine noise then hits all of them alike, while
    # each block is long enough that one session's spinning threads do not slow the next.
    def run_ultralytics(img):
        sp = yolo.predict(img, imgsz=a.imgsz, conf=0.25, iou=0.7, verbose=False)[0].speed
        times["ultralytics"].append(sp["preprocess"] + sp["inference"] + sp["postprocess"])
        for s, k in (("pre", "preprocess"), ("inf", "inference"), ("post", "postprocess")):
            stages["ultralytics"][s].append(sp[k])

    def run_edgeseg(name, m, img):
        t0 = time.perf_counter()
        m(img)
        times[name].append((time.perf_counter() - t0) * 1e3)
        t = m.last_timing
        stages[name]["pre"].append(t.preprocess_ms)
        stages[name]["inf"].append(t.inference_ms)
        stages[name]["post"].append(t.decode_ms)

    block = 25
    for start in range(0, a.frames + block, block):  # the first block of each runner is warm-up
        runners = [("ultralytics", None)] + list(models.items())
        for name, m in runners:
            for i in range(start, start + block):
                img = images[i % len(images)]
                if name == "ultralytics":
                    run_ultralytics(img)
                else:
                    run_edgeseg(name, m, img)
            if start == 0:
                times[name].clear()
                for v in stages[name].values():
                    v.clear()
    rows = {k: {"end_to_end_ms": _med(v), "preprocess_ms": _med(stages[k]["pre"]),
                "inference_ms": _med(stages[k]["inf"]),
                "postprocess_ms": _med(stages[k]["post"])} for k, v in times.items()}
    # decode budget on dense frames
    dense = mosaics(images, 50)
    dec: dict[str, dict] = {}
    for name, m in models.items():
        d, n = [], []
        for img in dense:
            x, lb = m.preprocess(img)
            outs = m.infer(x)
            t0 = time.perf_counter()
            res = m.decode(outs, lb)
            d.append((time.perf_counter() - t0) * 1e3)
            n.append(len(res.instances))
        dec[name] = {"decode_ms_median": _med(d), "decode_ms_max": round(max(d), 2), "instances_max": max(n),
                     "instances_mean": round(float(np.mean(n)), 1)}
    ul = rows["ultralytics"]["end_to_end_ms"]
    print(f"{a.model.name} at {a.imgsz} px, {a.frames} frames; edgeseg end to end / Ultralytics': "
          + ", ".join(f"{k} {r['end_to_end_ms'] / ul:.2f}" for k, r in rows.items() if k != "ultralytics"))
    print("| runner | end-to-end ms | preprocess | inference | postprocess/decode |")
    print("| --- | --- | --- | --- | --- |")
    for k, r in rows.items():
        print(f"| {k} | {r['end_to_end_ms']} | {r['preprocess_ms']} | {r['inference_ms']} | {r['postprocess_ms']} |")
    print()
    print("| bundle | decode ms median (dense) | max | instances max | mean |")
    print("| --- | --- | --- | --- | --- |")
    for k, r in dec.items():
        print(f"| {k} | {r['decode_ms_median']} | {r['decode_ms_max']} | {r['instances_max']} "
              f"| {r['instances_mean']} |")
    if a.json:
        a.json.write_text(json.dumps({"model": str(a.model), "imgsz": a.imgsz, "per_frame": rows,
                                      "dense_decode": dec}, indent=2))


if __name__ == "__main__":
    main()
