"""Annotating frames: masks, boxes, labels and an FPS line, drawn only inside each box."""

from __future__ import annotations

import cv2
import numpy as np

from .decode import NOT_ASKED, FrameResult

# Ultralytics-like palette (BGR), so pictures look familiar next to the reference tool.
_PALETTE = np.array([(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
                     (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
                     (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
                     (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255)],
                    dtype=np.uint8)


_LUT = _PALETTE[np.arange(256) % len(_PALETTE)]  # semantic label id -> colour, the same as color()


def color(class_id: int) -> tuple[int, int, int]:
    c = _PALETTE[class_id % len(_PALETTE)]
    return int(c[0]), int(c[1]), int(c[2])


def draw(frame: np.ndarray, result: FrameResult, alpha: float = 0.45, text: str | None = None,
         inplace: bool = False) -> np.ndarray:
    """Return ``frame`` with the result drawn on it (a copy unless ``inplace``)."""
    out = frame if inplace else frame.copy()
    if result.label_map is not None:
        shown = np.ones(256, dtype=bool)
        # a class named background is left as the camera saw it, like the pixels --classes left out
        shown[[k for k, n in enumerate(result.names[:256]) if n.lower() == "background"] + [NOT_ASKED]] = False
        over = _LUT[result.label_map]
        fg = shown[result.label_map]
        out[fg] = (out[fg] * (1 - alpha) + over[fg] * alpha).astype(np.uint8)
    for inst in result.instances:
        c = color(inst.class_id if inst.track_id is None else inst.track_id)  # tracking: a colour per object
        if inst.mask is not None:
            h, w = inst.mask.shape
            roi = out[inst.mask_y:inst.mask_y + h, inst.mask_x:inst.mask_x + w]
            m = inst.mask
            roi[m] = (roi[m] * (1 - alpha) + np.array(c) * alpha).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), c, 2)
        label = ("" if inst.track_id is None else f"#{inst.track_id} ") + f"{inst.class_name} {inst.score:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        ty = max(y1, th + 4)
        cv2.rectangle(out, (x1, ty - th - 4), (x1 + tw + 2, ty), c, -1)
        cv2.putText(out, label, (x1 + 1, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    if text:
        cv2.putText(out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return out
