"""A YOLO11n-seg with RANDOM weights, built from Ultralytics' yaml (80 classes), exported to ONNX.

For speed figures only (decode at 640 px / 80 classes, the COCO shape): its detections mean
nothing. Random weights give an arbitrary number of scores above 0.25, so the class convolutions'
biases are shifted until about ``--instances`` instances survive NMS on the reference scenes, as a
trained COCO model finds on a busy street; and the mask coefficients' biases until about half of
each kept box is mask (random coefficients leave the masks empty, and an instance whose mask is
empty is not reported: decode would time no masks at all).

Nothing is downloaded: the model is built from the yaml inside the ultralytics package, and every
socket connection, `pip`, `curl`, `wget` or `git` is refused while this runs (an audit hook), so a hidden attempt
fails loudly instead of happening.

    pip install torch ultralytics    # AGPL-3.0, for this benchmark only
    python bench/make_random_yolo11n_seg.py --imgsz 640 --instances 10 --out random-yolo11n-seg-640.onnx

``--instances`` counts the FP32 network's instances. Random weights quantize poorly: the INT8 bundle
of the model above keeps about twice as many (21.7 a frame on the scenes, measured here).
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

    def kept() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per frame: the boxes (xyxy) and mask coefficients that survive NMS, and the prototypes."""
        from torchvision.ops import batched_nms

        with torch.no_grad():
            pred, protos = net(x)[0]  # ultralytics 8.4: ([B, 4 + nc + nm, anchors], [B, nm, h, w])
        out = []
        for p, pr in zip(pred, protos):
            sc, cls = p[4:4 + head.nc].max(0)
            keep = sc > 0.25
            b = p[:4, keep].T
            boxes = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            k = batched_nms(boxes, sc[keep], cls[keep], 0.7)[:300]
            out.append((boxes[k], p[4 + head.nc:, keep].T[k], pr))
        return out

    def instances_per_frame() -> float:
        return float(np.mean([len(b) for b, _, _ in kept()]))

    def mask_fill() -> float:
        """Mean share of each kept box's prototype pixels whose mask logit is positive."""
        fills = []
        for boxes, coef, pr in kept():
            s = a.imgsz / pr.shape[-1]
            for b, c in zip(boxes, coef):
                x0, y0 = int(max(b[0] / s, 0)), int(max(b[1] / s, 0))
                x1, y1 = int(min(b[2] / s + 1, pr.shape[-1])), int(min(b[3] / s + 1, pr.shape[-2]))
                if x1 > x0 and y1 > y0:
                    fills.append(float((torch.einsum("k,khw->hw", c, pr[:, y0:y1, x0:x1]) > 0).float().mean()))
        return float(np.mean(fills)) if fills else 0.0

    # Random initial weights shrink the activations layer after layer (the head's features are ~1e-7,
    # below float32's resolution of a logit: every anchor scores the same). One pass in training
    # mode on the scenes sets each BatchNorm's statistics to the activations it sees, so every layer
    # passes on normalised, varied features, as a trained network does.
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # a plain average over the pass
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()

    # shift every scale's class biases by the same amount until ~N instances survive NMS (bisection)
    # Random features give the same class logit at every anchor of the scenes' flat background, so
    # a plain shift makes the count jump from 0 to dozens of background boxes at one bias. Each
    # class's background logit (the median over anchors) is moved to 0 first: what is left is how
    # an anchor differs from the background, i.e. the shapes, and the count grows with the shift.
    # The final weights are scaled so that the top 0.1% of anchors stand 4 logits above the background.
    def logits() -> list[torch.Tensor]:
        """Per scale: the raw class logits (the final convolutions' outputs), [nc, B * anchors]."""
        got: list[torch.Tensor] = []
        hooks = [branch[-1].register_forward_hook(lambda m, i, o: got.append(o.double())) for branch in head.cv3]
        with torch.no_grad():
            net(x)
        for h in hooks:
            h.remove()
        return [o.transpose(0, 1).reshape(head.nc, -1) for o in got]

    dev = torch.cat([(p - p.median(1, keepdim=True).values).flatten() for p in logits()]).float()
    top = float(torch.quantile(dev[::7], 0.999))
    for branch in head.cv3:
        branch[-1].weight.data *= 4.0 / max(top, 1e-6)
    base = [(branch[-1].bias.detach().double() - p.median(1).values).float() for branch, p in zip(head.cv3, logits())]
    lo, hi = -30.0, 30.0
    for _ in range(20):
        mid = (lo + hi) / 2
        for branch, b0 in zip(head.cv3, base):
            branch[-1].bias.data = b0 + mid
        got = instances_per_frame()
        print(f"class bias shift {mid:+.3f}: {got:.1f} instances per frame", flush=True)
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
    # Random mask coefficients leave most masks empty (and an empty mask drops its instance, so
    # decode would time nothing): shift the coefficient biases until about half of each box is mask.
    base = [branch[-1].bias.detach().clone() for branch in head.cv4]
    lo, hi = -10.0, 10.0
    for _ in range(14):
        shift = (lo + hi) / 2
        for branch, b0 in zip(head.cv4, base):
            branch[-1].bias.data = b0 + shift
        fill = mask_fill()
        if fill < 0.5:
            lo = shift
        else:
            hi = shift
        if abs(fill - 0.5) < 0.05:
            break
    print(f"mask coefficient biases shifted by {shift:+.3f}: {fill:.0%} of each kept box is mask")
    yolo.model = net
    out = yolo.export(format="onnx", imgsz=a.imgsz, simplify=False, dynamic=False, opset=17)
    Path(out).replace(a.out)
    print(f"{a.out}: YOLO11n-seg, RANDOM weights, {head.nc} classes, {a.imgsz} px (for speed figures only)")


if __name__ == "__main__":
    main()
