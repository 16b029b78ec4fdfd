"""The fidelity figures said as a verdict a user can act on, for convert's and eval's last line."""

from __future__ import annotations

from typing import Any

# (good, fair) lower bounds: detections kept / mean mask IoU, pixel agreement, lowest output cosine
DETECTIONS = (0.95, 0.85)
MASK_IOU = (0.95, 0.85)
PIXELS = (0.97, 0.90)
COSINE = (0.99, 0.95)

ADVICE = ("calibrate on images of the deployment scenes (--calib), or keep the layers that suffer in float "
          "(--keep-float), or convert with --fp16")


def grade(values: list[tuple[float, tuple[float, float]]]) -> str:
    """'good' when every value reaches its good bound, 'fair' when each reaches its fair bound."""
    if all(v >= good for v, (good, _) in values):
        return "good"
    if all(v >= fair for v, (_, fair) in values):
        return "fair"
    return "poor"


def verdict(f: dict[str, Any], precision: str = "int8") -> str:
    """``INT8 keeps 97% of detections, mask IoU 0.99: good`` from a fidelity record (the bundle's
    manifest or ``edgeseg eval --against``)."""
    p = precision.upper()
    if f.get("pixel_agreement") is not None:
        a = float(f["pixel_agreement"])
        text, g = f"{p} agrees with FP32 on {a:.0%} of pixels", grade([(a, PIXELS)])
    elif f.get("detections_kept") is not None:
        kept, iou = float(f["detections_kept"]), f.get("mean_mask_iou")
        vals = [(kept, DETECTIONS)] + ([(float(iou), MASK_IOU)] if iou is not None else [])
        text = f"{p} keeps {kept:.0%} of detections" + (f", mask IoU {float(iou):.2f}" if iou is not None else "")
        g = grade(vals)
    elif f.get("cosine"):
        low = min(f["cosine"], key=f["cosine"].get)
        c = float(f["cosine"][low])
        text, g = f"{p} outputs follow FP32 (lowest cosine {c:.3f}, {low})", grade([(c, COSINE)])
    else:
        return "not measured"
    return f"{text}: {g}" + (f"; {ADVICE}" if g == "poor" else "")
