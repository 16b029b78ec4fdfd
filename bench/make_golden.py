"""Produce golden reference predictions with Ultralytics (run once; the output is committed).

    pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190 onnxruntime pycocotools
    python bench/make_golden.py edgeseg/assets/shapes-yolo11n-seg.onnx tests/fixtures/golden_yolo11n.json \
        edgeseg/assets/shapes/val/images tests/fixtures/odd_sizes

Masks are Ultralytics' ``process_mask(upsample=True)`` output mapped to the source frame with its
own ``scale_masks``, stored as COCO RLE.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import ultralytics
from ultralytics import YOLO
from ultralytics.utils import ops


def predict(model: YOLO, path: Path, conf: float, iou: float) -> dict:
    """One image's golden entry (tests/test_decode_reference.py predicts a few again with this)."""
    r = model.predict(str(path), imgsz=320, conf=conf, iou=iou, verbose=False)[0]
    h, w = r.orig_shape
    inst = []
    if r.masks is not None and len(r.boxes):
        m = ops.scale_masks(r.masks.data[None].float(), (h, w))[0] > 0.5
        for k in range(len(r.boxes)):
            rle = mask_util.encode(np.asfortranarray(m[k].cpu().numpy().astype(np.uint8)))
            inst.append({"class_id": int(r.boxes.cls[k]), "score": float(r.boxes.conf[k]),
                         "box": [float(v) for v in r.boxes.xyxy[k]],
                         "mask": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return {"width": w, "height": h, "instances": inst}


def main() -> None:
    model_path, out_path, *folders = sys.argv[1:]
    model = YOLO(model_path, task="segment")
    images = sorted(p for f in folders for p in Path(f).iterdir() if p.suffix.lower() in {".jpg", ".png"})
    out = {"ultralytics": ultralytics.__version__, "model": Path(model_path).name, "conf": 0.25, "iou": 0.7,
           "images": {}}
    for p in images:
        out["images"][f"{p.parent.name}/{p.name}"] = predict(model, p, out["conf"], out["iou"])
    Path(out_path).write_text(json.dumps(out))
    print(f"{len(images)} images, {sum(len(v['instances']) for v in out['images'].values())} instances -> {out_path}")


if __name__ == "__main__":
    main()
