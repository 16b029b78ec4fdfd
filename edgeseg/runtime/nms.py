"""Class-aware non-maximum suppression in numpy, matching torchvision's greedy ``nms``."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` [N,4] with every box in ``b`` [M,4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.nan_to_num(iou, nan=0.0, posinf=0.0, neginf=0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thres: float,
        max_det: int = 300, agnostic: bool = False) -> np.ndarray:
    """Indices of kept boxes, best score first.

    Boxes of different classes never suppress each other unless ``agnostic``. The IoU matrix is
    computed once; the greedy pass walks it row by row (n is at most a few hundred after the
    confidence filter, so this costs well under a millisecond).
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    over = box_iou(b, b) > iou_thres
    if not agnostic:
        c = classes[order]
        over &= c[:, None] == c[None, :]
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_det:
            break
        suppressed |= over[i]
    return order[np.asarray(keep, dtype=np.int64)]
