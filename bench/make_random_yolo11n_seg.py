"""A YOLO11n-seg with RANDOM weights, built from Ultralytics' yaml (80 classes), exported to ONNX.

For speed figures only (decode at 640 px / 80 classes, the COCO shape): its detections mean
nothing. Random weights give an arbitrary number of scores above 0.25, so the class convolutions'
biases are shifted until about ``--instances`` instances survive NMS on the reference scenes, as a
trained COCO model finds on a busy street.

Nothing is downloaded: the model is built from the yaml inside the ultralytics package, and every
socket connection, `pip`, `curl`, `wget` or `git` is refused while this runs (an audit hook), so a hidden attempt
fails loudly instead of happening.

    pip install torch ultralytics    # AGPL-3.0, for this benchmark only
    python bench/make_random_yolo11n_seg.py --imgsz 640 --out random-yolo11n-seg-640.onnx
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

BLOCKED = ("socket.connect", "socket.getaddrinfo", "urllib.Request", "os.system")
FETCHERS = ("pip", "curl", "wget", "git")  # a child process could reach the network for the parent


def _no_network(event: str, args: tuple) -> None:
    if event in BLOCKED:
        raise RuntimeError(f"blocked {event} {args[:2]!r}: this script must not reach the network")
    if event == "subprocess.Popen":  # torch runs ldconfig at import: programs are allowed, fetchers not
        argv = [str(v) for v in (args[1] or [])]
        if any(Path(v).name.startswith(FETCHERS) or v in ("install", "clone") for v in argv):
            raise RuntimeError(f"blocked {argv}: this script must not download or install anything")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--instances", type=int, default=20, help="about how many instances per frame after NMS")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    os.environ["YOLO_OFFLINE"] = "1"
    sys.addaudithook(_no_network)

    import cv2
    import torch
    from ultralytics import YOLO

    from edgeseg.defaults import DEFAULT_SCENES
    from edgeseg.runtime.preprocess import preprocess

    torch.manual_seed(a.seed)
    yolo = YOLO("yolo11n-seg.yaml", task="segment")  # the architecture only: random initial weights
    net = yolo.model.eval()
    head = net.model[-1]
    files = sorted(DEFAULT_SCENES.iterdir())[:8]
    x = torch.from_numpy(np.concatenate([preprocess(cv2.imread(str(f)), (a.imgsz, a.imgsz))[0] for f in files]))

    def instances_per_frame() -> float:
        from torchvision.ops import batched_nms

        with torch.no_grad():
            pred = net(x)[0]  # [B, 4 + nc + nm, anchors], boxes xywh in input pixels, scores sigmoid
        if isinstance(pred, (list, tuple)):  # ultralytics 8.4: (predictions, prototypes)
            pred = pred[0]
        n = []
        for p in pred:
            sc, cls = p[4:4 + head.nc].max(0)
            keep = sc > 0.25
            b = p[:4, keep].T
            boxes = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            n.append(min(len(batched_nms(boxes, sc[keep], cls[keep], 0.7)), 300))
        return float(np.mean(n))

    # shift every scale's class biases by the same amount until ~N instances survive NMS (bisection)
    # Random features give nearly the same class logit at every anchor, so the count jumps from 0
    # to thousands at one bias; larger final weights spread the logits across anchors first.
    for branch in head.cv3:
        branch[-1].weight.data *= 20
    base = [branch[-1].bias.detach().clone() for branch in head.cv3]
    lo, hi = -30.0, 30.0
    for _ in range(20):
        mid = (lo + hi) / 2
        for branch, b0 in zip(head.cv3, base):
            branch[-1].bias.data = b0 + mid
        got = instances_per_frame()
        if got < a.instances:
            lo = mid
        else:
            hi = mid
        if abs(got - a.instances) <= max(1.0, 0.1 * a.instances):
            break
    else:  # no shift within tolerance: the smallest shift that reached the count
        mid = hi
        for branch, b0 in zip(head.cv3, base):
            branch[-1].bias.data = b0 + mid
        got = instances_per_frame()
    print(f"class biases shifted by {mid:+.3f} (logit(0.25) = {math.log(1 / 3):.3f}): "
          f"{got:.1f} instances per frame on {len(files)} reference scenes")
    yolo.model = net
    out = yolo.export(format="onnx", imgsz=a.imgsz, simplify=False, dynamic=False, opset=17)
    Path(out).replace(a.out)
    print(f"{a.out}: YOLO11n-seg, RANDOM weights, {head.nc} classes, {a.imgsz} px (for speed figures only)")


if __name__ == "__main__":
    main()
