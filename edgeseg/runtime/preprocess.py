"""Preprocessing: the one function used by calibration, conversion checks and the runtime.

:class:`InputSpec` is the one description of a model input (size, layout, dtype, colour order,
scale, mean/std, letterbox or stretch, pad value): built at conversion from the profile's
``[input]`` table, the model and the command line, written to the manifest's ``input``, and read
back by :func:`preprocess`, which honours every field. The letterbox reproduces Ultralytics'
``LetterBox(auto=False, center=True)`` exactly (same rounding of the padding, same INTER_LINEAR
resize, pad value 114 by default) so that a bundle sees the pixels its model was trained and
exported with, and calibration sees the pixels the device will feed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np

PAD_VALUE = 114
RESIZE_MODES = ("letterbox", "stretch")


@dataclass(frozen=True)
class InputSpec:
    """A model input. Float inputs are ``(pixel * scale - mean) / std`` per channel, in ``color``
    order; mean and std are in scaled units (ImageNet: scale 1/255, mean 0.485,0.456,0.406, std
    0.229,0.224,0.225). uint8 inputs are the raw pixels: the toolchain folds scale, mean and std
    into the model."""

    height: int
    width: int
    layout: str = "nchw"  # nchw | nhwc
    dtype: str = "float32"  # float32 | uint8
    color: str = "rgb"  # rgb | bgr
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "letterbox"  # letterbox: keep the aspect ratio and pad | stretch: resize to the input size
    pad_value: int = PAD_VALUE

    def __post_init__(self) -> None:
        checks = [(self.layout in ("nchw", "nhwc"), "layout is nchw or nhwc"),
                  (self.dtype in ("float32", "uint8"), "dtype is float32 or uint8"),
                  (self.color in ("rgb", "bgr"), "color is rgb or bgr"),
                  (self.resize in RESIZE_MODES, "resize is letterbox or stretch"),
                  (len(self.mean) == 3 and len(self.std) == 3, "mean and std have 3 values"),
                  (all(v != 0 for v in self.std) and self.scale != 0, "std and scale are not 0"),
                  (0 <= int(self.pad_value) <= 255, "pad_value is 0..255")]
        bad = [why for ok, why in checks if not ok]
        if bad:
            raise ValueError(f"input spec: {'; '.join(bad)}")

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **over: Any) -> InputSpec:
        """From a manifest's ``input`` (also older ones, which only had ``letterbox.pad_value``)."""
        pad = d.get("pad_value", (d.get("letterbox") or {}).get("pad_value", PAD_VALUE))
        kw = {"height": int(d["height"]), "width": int(d["width"]), "layout": d.get("layout", "nchw"),
              "dtype": d.get("dtype", "float32"), "color": d.get("color", "rgb"),
              "scale": float(d.get("scale", 1 / 255)), "mean": tuple(float(v) for v in d.get("mean", (0, 0, 0))),
              "std": tuple(float(v) for v in d.get("std", (1, 1, 1))), "resize": d.get("resize", "letterbox"),
              "pad_value": int(pad)}
        kw.update(over)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        # older readers look here for the pad value
        d["letterbox"] = {"pad_value": self.pad_value, "center": True} if self.resize == "letterbox" else None
        return d

    def as_(self, layout: str | None = None, dtype: str | None = None) -> InputSpec:
        """The same input in another layout or dtype (what a toolchain's calibration reader wants)."""
        return replace(self, layout=layout or self.layout, dtype=dtype or self.dtype)


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


def letterbox(frame_bgr: np.ndarray, size: tuple[int, int], pad_value: int = PAD_VALUE) -> tuple[np.ndarray, Letterbox]:
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
                                 value=(pad_value, pad_value, pad_value))
    return img, lb


def stretch(frame_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize a BGR uint8 frame to ``size`` without keeping its aspect ratio (no padding)."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
    h, w = frame_bgr.shape[:2]
    img = frame_bgr if (h, w) == tuple(size) else cv2.resize(frame_bgr, (size[1], size[0]),
                                                             interpolation=cv2.INTER_LINEAR)
    return img, Letterbox(size[1] / w, size[0] / h, 0, 0, w, h, size[1], size[0])


def fit(frame_bgr: np.ndarray, spec: InputSpec | tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """The frame resized into the input as ``spec`` says (letterbox or stretch), still BGR uint8."""
    if not isinstance(spec, InputSpec):
        return letterbox(frame_bgr, spec)
    if spec.resize == "stretch":
        return stretch(frame_bgr, spec.hw)
    return letterbox(frame_bgr, spec.hw, spec.pad_value)


def to_input(img_bgr: np.ndarray, layout: str = "nchw", dtype: str = "float32", scale: float = 1 / 255.0,
             mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
             color: str = "rgb") -> np.ndarray:
    """Turn a resized BGR uint8 image into a batch-of-one model input: ``(pixel * scale - mean) / std``
    per channel of ``color`` order.

    ``dtype='uint8'`` keeps raw pixels for runtimes that fold normalisation into the model.
    """
    img = img_bgr[:, :, ::-1] if color == "rgb" else img_bgr
    if dtype == "uint8":
        x8 = img.transpose(2, 0, 1) if layout == "nchw" else img
        return np.ascontiguousarray(x8)[None]
    if layout == "nchw":
        img = img.transpose(2, 0, 1)
    x = np.ascontiguousarray(img, dtype=np.float32)  # the one copy
    x *= np.float32(scale)
    if any(mean) or any(s != 1 for s in std):
        shape = (3, 1, 1) if layout == "nchw" else (3,)
        x -= np.asarray(mean, np.float32).reshape(shape)
        x /= np.asarray(std, np.float32).reshape(shape)
    return x[None]


def preprocess(frame_bgr: np.ndarray, size: InputSpec | tuple[int, int], layout: str | None = None,
               dtype: str | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize (letterbox or stretch) then convert: exactly what a bundle's backend is fed.

    ``size`` is the model's :class:`InputSpec` (every field honoured), or (height, width) for the
    default Ultralytics input; ``layout``/``dtype`` replace the spec's (a toolchain reading the same
    pixels in its own layout)."""
    spec = size if isinstance(size, InputSpec) else InputSpec(*size)
    spec = spec.as_(layout, dtype)
    img, lb = fit(frame_bgr, spec)
    return to_input(img, spec.layout, spec.dtype, spec.scale, spec.mean, spec.std, spec.color), lb
