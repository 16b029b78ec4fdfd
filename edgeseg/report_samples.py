"""Which images `eval --report` shows, and how: the worst agreement first, then a spread of the
rest, each as ground truth beside FP32 beside the converted bundle (or beside the bundle alone).

While eval runs, only a score, the path and the label polygons of each image are kept; the few
chosen images are read and run again when the report is written, so memory stays flat on a large
dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .runtime.decode import FrameResult, Instance

WORST = 4  # the worst-agreeing images shown
SPREAD = (0.5, 1.0)  # then the images at these quantiles of agreement (median, best)
CONF, IOU = 0.25, 0.7  # deployment thresholds, as eval's fidelity uses


def ground_truth(polys: list[tuple[int, np.ndarray]], names: list[str], h: int, w: int,
                 semantic: bool = False) -> FrameResult:
    """Label polygons (class ids already the model's) as a result that draws like a prediction."""
    from .eval import rasterize

    if semantic:
        lm = np.full((h, w), names.index("background") if "background" in names else 0, dtype=np.uint8)
        for k, poly in polys:
            cv2.fillPoly(lm, [np.round(poly).astype(np.int32)], int(k))
        return FrameResult(w, h, label_map=lm, names=names)
    inst = []
    for k, poly in polys:
        m = rasterize(poly, h, w).astype(bool)
        ys, xs = np.nonzero(m)
        if not ys.size:
            continue
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        inst.append(Instance(int(k), names[k] if k < len(names) else str(k), 1.0,
                             np.array([x1, y1, x2, y2], dtype=np.float32), m[y1:y2, x1:x2], x1, y1))
    return FrameResult(w, h, inst, names=names)


def agreement(ref: FrameResult, test: FrameResult) -> float:
    """1.0 when two results agree: the pixel agreement of label maps, or the matched instances'
    mask IoU summed over the larger of the two instance counts."""
    from .fidelity import mask_iou, match_instances

    if ref.label_map is not None and test.label_map is not None:
        return float((ref.label_map == test.label_map).mean())
    n = max(len(ref.instances), len(test.instances))
    if n == 0:
        return 1.0
    h, w = ref.height, ref.width
    return sum(mask_iou(ref.instances[r], test.instances[t], h, w) for r, t, _ in match_instances(ref, test)) / n


def choose(scores: list[float], worst: int = WORST, spread: tuple[float, ...] = SPREAD) -> list[int]:
    """Indexes of the images to show: the ``worst`` lowest scores (lowest first), then the images
    at the ``spread`` quantiles of the others, without repeats."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    picked = order[:worst]
    rest = order[worst:]
    for q in spread:
        if rest:
            i = rest[min(round(q * (len(rest) - 1)), len(rest) - 1)]
            if i not in picked:
                picked.append(i)
    return picked


class ReportSamples:
    """Collects what the report needs as eval goes (``add`` per image), then draws the chosen ones."""

    def __init__(self, model: Any, against: Any = None):
        self.model, self.against = model, against
        self.semantic = model.manifest.head["type"] == "semantic"
        self.items: list[tuple[float, Path, list]] = []

    def _run(self, m: Any, frame: np.ndarray, outs: dict | None = None, lb: Any = None) -> FrameResult:
        if outs is None:
            x, lb = m.preprocess(frame)
            outs = m.infer(x)
        return m.decoder(outs, lb, conf=CONF, iou=IOU, classes=m.thresholds.classes)

    def add(self, path: Path, frame: np.ndarray, polys: list[tuple[int, np.ndarray]], outs: dict, lb: Any) -> None:
        """One evaluated image: its label polygons (model class ids) and the bundle's raw outputs."""
        h, w = frame.shape[:2]
        test = self._run(self.model, frame, outs, lb)
        ref = (self._run(self.against, frame) if self.against is not None
               else ground_truth(polys, self.model.names, h, w, self.semantic))
        self.items.append((agreement(ref, test), path, polys))

    def pictures(self) -> list[tuple[str, np.ndarray, float]]:
        """(caption, picture, agreement) of the chosen images, worst first."""
        from .runtime.draw import draw
        from .runtime.sources import read_image

        out = []
        precision = self.model.manifest.precision.upper()
        for i in choose([s for s, _, _ in self.items]):
            score, path, polys = self.items[i]
            frame = read_image(path)
            h, w = frame.shape[:2]
            panels = [_caption(draw(frame, ground_truth(polys, self.model.names, h, w, self.semantic),
                                    show_score=False), "ground truth")]
            if self.against is not None:
                ref = self.against
                panels.append(_caption(draw(frame, self._run(ref, frame)), ref.manifest.precision.upper()))
            panels.append(_caption(draw(frame, self._run(self.model, frame)), precision))
            what = "agreement with FP32" if self.against is not None else "agreement with the labels"
            out.append((f"{path.name}: {what} {score:.2f}", np.concatenate(panels, 1), score))
        return out


def _caption(pic: np.ndarray, text: str) -> np.ndarray:
    """A strip above the picture naming it (the picture itself stays as drawn)."""
    h, w = pic.shape[:2]
    scale = max(min(w, h) / 640, 0.45)
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)  # the same height for every panel
    strip = np.full((th + base + 10, w, 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (6, th + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, pic], 0)
