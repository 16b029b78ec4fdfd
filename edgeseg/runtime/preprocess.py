"""Letterbox preprocessing: the one function used by calibration, conversion checks and the runtime.

It reproduces Ultralytics' ``LetterBox(auto=False, center=True)`` exactly (same rounding of the
padding, same INTER_LINEAR resize, pad value 114) so that a bundle sees the pixels its model was
trained and exported with, and calibration sees the pixels the device will feed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How a source frame was mapped into the model input; used to undo it exactly."""

    scale_x: float  # model pixels per source pixel, per axis (sides are rounded separately)
    scale_y: float
    pad_x: int  # left padding in model pixels
    pad_y: int  # top padding in model pixels
    src_w: int
    src_h: int
    new_w: int  # resized (unpadded) image size in model pixels
    new_h: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from model input pixels to source-frame pixels, clipped to the frame."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.src_w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.src_h)
        return out


def letterbox_params(src_h: int, src_w: int, dst_h: int, dst_w: int) -> Letterbox:
    r = min(dst_h / src_h, dst_w / src_w)
    new_w, new_h = max(int(round(src_w * r)), 1), max(int(round(src_h * r)), 1)
    dw, dh = (dst_w - new_w) / 2, (dst_h - new_h) / 2
    # Ultralytics pads with round(d -/+ 0.1): the odd pixel goes to the bottom/right.
    return Letterbox(new_w / src_w, new_h / src_h, int(round(dw - 0.1)), int(round(dh - 0.1)),
                     src_w, src_h, new_w, new_h)


def letterbox(frame_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize and pad a BGR uint8 frame to ``size`` = (height, width). Returns HWC BGR uint8."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
    h, w = frame_bgr.shape[:2]
    lb = letterbox_params(h, w, size[0], size[1])
    img = frame_bgr
    if (w, h) != (lb.new_w, lb.new_h):
        img = cv2.resize(img, (lb.new_w, lb.new_h), interpolation=cv2.INTER_LINEAR)
    bottom = size[0] - lb.new_h - lb.pad_y
    right = size[1] - lb.new_w - lb.pad_x
    if lb.pad_y or bottom or lb.pad_x or right:
        img = cv2.copyMakeBorder(img, lb.pad_y, bottom, lb.pad_x, right, cv2.BORDER_CONSTANT,
                                 value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    return img, lb


def to_input(img_bgr: np.ndarray, layout: str = "nchw", dtype: str = "float32",
             scale: float = 1 / 255.0) -> np.ndarray:
    """Turn a letterboxed BGR uint8 image into a batch-of-one model input (RGB).

    ``dtype='uint8'`` keeps raw pixels for runtimes that fold normalisation into the model.
    """
    rgb = img_bgr[:, :, ::-1]
    if layout == "nchw":
        rgb = rgb.transpose(2, 0, 1)
    if dtype == "uint8":
        return np.ascontiguousarray(rgb)[None]
    x = np.ascontiguousarray(rgb, dtype=np.float32)
    x *= np.float32(scale)
    return x[None]


def preprocess(frame_bgr: np.ndarray, size: tuple[int, int], layout: str = "nchw",
               dtype: str = "float32") -> tuple[np.ndarray, Letterbox]:
    """Letterbox then convert: exactly what a bundle's backend is fed."""
    img, lb = letterbox(frame_bgr, size)
    return to_input(img, layout, dtype), lb
