"""YOLO26n-seg from Ultralytics' yaml with random weights, rescaled so that it detects something.

    python tests/random_yolo26.py IMAGE_FOLDER   # in an empty folder: rand26.pt, rand26-default.onnx, rand26-e2e.onnx

For tests where accuracy is not the point (which export edgeseg reads, and how): run by
tests/test_yolo26.py in a subprocess, as Ultralytics (AGPL) is optional.
"""
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from lsuv import unit_deviation  # tests/lsuv.py: this script's folder is on sys.path
from ultralytics import YOLO

images = sorted(Path(sys.argv[1]).glob("*.jpg"))[:16]
torch.manual_seed(0)
y = YOLO("yolo26n-seg.yaml")
m = y.model.eval()
# random weights that see the picture (tests/lsuv.py), then the class logits put where a few
# anchors pass conf 0.25
x = np.stack([cv2.resize(cv2.imread(str(p)), (160, 160))[:, :, ::-1].transpose(2, 0, 1) for p in images])
unit_deviation(m, torch.from_numpy(x).float() / 255)
head = m.model[-1]
with torch.no_grad():
    for branch in (head.cv3, head.one2one_cv3):
        for seq in branch:
            seq[-1].bias.data -= 4.0
y.save("rand26.pt")
out = y.export(format="onnx", imgsz=160, opset=17, simplify=True)
shutil.move(out, "rand26-default.onnx")
out = YOLO("rand26.pt").export(format="onnx", imgsz=160, opset=17, simplify=True, end2end=True)
shutil.move(out, "rand26-e2e.onnx")
