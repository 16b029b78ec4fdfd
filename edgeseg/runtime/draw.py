"""Annotating frames: masks, boxes and labels (and, on live views, an FPS line).

Readable at a glance, as Ultralytics' and supervision's annotators are: the most confident
instance is drawn on top; every mask goes down first, then every outline, then every label, so no
outline crosses a label; labels stay inside the frame; label text is black or white, whichever
contrasts with the label colour; line width and font scale follow the frame size.
"""

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
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def color(class_id: int) -> tuple[int, int, int]:
    c = _PALETTE[class_id % len(_PALETTE)]
    return int(c[0]), int(c[1]), int(c[2])


def text_color(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label colours, white on dark ones (Rec. 601 luma, as a TV would judge it)."""
    b, g, r = bgr
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def line_width(height: int, width: int) -> int:
    """Outline width in pixels for a frame of this size (Ultralytics' rule: 2 px at 320x320)."""
    return max(round((height + width) / 2 * 0.003), 2)


def label_box(x1: float, y1: float, tw: int, th: int, pad: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Where a label of text size (tw, th) goes for a box whose top-left corner is (x1, y1): on top
    of the box when there is room, else just inside it; moved left and clipped to stay inside the
    frame. Returns (left, top, right, bottom), all inside the frame."""
    x1, y1 = float(x1), float(y1)  # round() of a numpy 1.x scalar stays a numpy float
    bw, bh = min(tw + 2 * pad, width), min(th + 2 * pad, height)
    left = min(max(round(x1), 0), width - bw)
    top = round(y1) - bh
    if top < 0:  # no room above the box: inside its top edge
        top = max(round(y1), 0)
    top = min(top, height - bh)
    return left, top, left + bw - 1, top + bh - 1


def draw_text(out: np.ndarray, text: str) -> np.ndarray:
    """The FPS line of a live view, top-left, white on a dark outline (in place)."""
    h, w = out.shape[:2]
    scale = max(line_width(h, w) / 4, 0.45)
    y = int(20 * scale / 0.55)
    cv2.putText(out, text, (8, y), _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (8, y), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _color_of(inst) -> tuple[int, int, int]:
    return color(inst.class_id if inst.track_id is None else inst.track_id)  # tracking: a colour per object


def draw(frame: np.ndarray, result: FrameResult, alpha: float = 0.45, text: str | None = None,
         inplace: bool = False, line_width_px: int | None = None, font_scale: float | None = None,
         show_score: bool = True) -> np.ndarray:
    """Return ``frame`` with the result drawn on it (a copy unless ``inplace``). ``text`` (e.g. an
    FPS figure) is written top-left; saved pictures leave it out. ``show_score=False`` labels
    with the class name alone (ground truth)."""
    out = frame if inplace else frame.copy()
    h, w = out.shape[:2]
    lw = line_width_px or line_width(h, w)
    fs = font_scale or max(lw / 3, 0.4)
    ft = max(lw - 1, 1)
    if result.label_map is not None:
        shown = np.ones(256, dtype=bool)
        # a class named background is left as the camera saw it, like the pixels --classes left out
        shown[[k for k, n in enumerate(result.names[:256]) if n.lower() == "background"] + [NOT_ASKED]] = False
        over = _LUT[result.label_map]
        fg = shown[result.label_map]
        out[fg] = (out[fg] * (1 - alpha) + over[fg] * alpha).astype(np.uint8)
    # lowest score first, so the most confident instance ends on top in every layer
    order = sorted(result.instances, key=lambda i: i.score)
    for inst in order:
        if inst.mask is not None:
            mh, mw = inst.mask.shape
            roi = out[inst.mask_y:inst.mask_y + mh, inst.mask_x:inst.mask_x + mw]
            m = inst.mask[:roi.shape[0], :roi.shape[1]]
            roi[m] = (roi[m] * (1 - alpha) + np.array(_color_of(inst)) * alpha).astype(np.uint8)
    for inst in order:
        x1, y1, x2, y2 = np.rint(inst.box).astype(int).tolist()
        cv2.rectangle(out, (x1, y1), (x2, y2), _color_of(inst), lw)
    pad = max(lw // 2, 1) + 1
    for inst in order:
        c = _color_of(inst)
        label = ("" if inst.track_id is None else f"#{inst.track_id} ") + (
            f"{inst.class_name} {inst.score:.2f}" if show_score else inst.class_name)
        (tw, th), base = cv2.getTextSize(label, _FONT, fs, ft)
        left, top, right, bottom = label_box(inst.box[0] - lw / 2, inst.box[1] - lw / 2, tw, th + base, pad, h, w)
        cv2.rectangle(out, (left, top), (right, bottom), c, -1)
        cv2.putText(out, label, (left + pad, bottom - pad - base + 1), _FONT, fs, text_color(c), ft, cv2.LINE_AA)
    if text:
        draw_text(out, text)
    return out
