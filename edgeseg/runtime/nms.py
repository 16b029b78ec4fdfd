"""Class-aware non-maximum suppression in numpy, matching torchvision's greedy ``nms``."""

from __future__ import annotations

import cv2
import numpy as np


# Up to this many candidates (a typical frame at the default conf has a few dozen) the n x n
# overlap matrix is built at once (n^2 floats: 16 KB at 64) and the greedy pass is one numpy
# row per candidate; the per-class loop below pays ~10 numpy calls per kept box instead.
SMALL_N = 64


def _greedy_small(b: np.ndarray, c: np.ndarray, area: np.ndarray, iou_thres: float, max_det: int,
                  agnostic: bool) -> np.ndarray:
    """Greedy NMS of boxes already in score order, with the same float32 IoU, operand for
    operand, as the loop in :func:`nms` (so a tie at the threshold goes the same way)."""
    n = len(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.minimum(b[None, :, 2], b[:, None, 2]) - np.maximum(b[None, :, 0], b[:, None, 0])
        h = np.minimum(b[None, :, 3], b[:, None, 3]) - np.maximum(b[None, :, 1], b[:, None, 1])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        over = inter / (area[None, :] + area[:, None] - inter) > iou_thres  # NaN: no overlap
    over &= np.triu(np.ones((n, n), dtype=bool), 1)  # a box only suppresses those after it
    if not agnostic:
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
    return np.asarray(keep, dtype=np.int64)


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

    Boxes of different classes never suppress each other unless ``agnostic``. Greedy, one row
    at a time: each kept box is compared only with the candidates still alive, so memory is O(n)
    and the work O(n x kept) with kept <= ``max_det`` (an n x n IoU matrix cost 2.7 GB on a dense
    frame at conf 0.01).
    """
    n = len(boxes)
    if n == 0 or max_det <= 0:
        return np.zeros(0, dtype=np.int64)
    wh = boxes[:, 2:] - boxes[:, :2]
    if n > SMALL_N and (wh > 0).all() and np.isfinite(boxes).all() and np.isfinite(scores).all():
        # OpenCV's batched NMS: the same greedy rule (score order, suppress IoU > threshold, per
        # class) in C++, ~10x faster on thousands of candidates; degenerate boxes take the loop below
        xywh = np.concatenate([boxes[:, :2], wh], 1).astype(np.float64)
        cls = np.zeros(n, np.int32) if agnostic else classes.astype(np.int32)
        kept = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), cls, float(np.min(scores)) - 1.0,
                                       float(iou_thres))
        return np.asarray(kept, dtype=np.int64).reshape(-1)[:max_det]
    order = np.argsort(-scores, kind="stable")
    b = boxes[order].astype(np.float32, copy=False)
    c = classes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if n <= SMALL_N:
        return order[_greedy_small(b, c, area, iou_thres, max_det, agnostic)]
    # per class, the candidates in score order: a kept box is compared only with its own class
    groups = {0: np.arange(n)} if agnostic else {int(k): np.flatnonzero(c == k) for k in np.unique(c)}
    group_of = np.zeros(n, dtype=np.int64) if agnostic else c.astype(np.int64)
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            if suppressed[i]:
                continue
            keep.append(i)
            if len(keep) >= max_det:
                break
            g = groups[int(group_of[i])]
            rest = g[np.searchsorted(g, i, side="right"):]
            rest = rest[~suppressed[rest]]
            if not len(rest):
                continue
            w = np.minimum(b[rest, 2], b[i, 2]) - np.maximum(b[rest, 0], b[i, 0])
            h = np.minimum(b[rest, 3], b[i, 3]) - np.maximum(b[rest, 1], b[i, 1])
            inter = np.clip(w, 0, None) * np.clip(h, 0, None)
            iou = inter / (area[rest] + area[i] - inter)
            suppressed[rest[iou > iou_thres]] = True  # NaN (degenerate boxes) counts as no overlap
    return order[np.asarray(keep, dtype=np.int64)]
