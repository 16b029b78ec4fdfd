"""YOLO26n-sem (Ultralytics' semantic task) from its yaml with random weights, and Ultralytics' own
semantic predictions on non-square frames.

    python tests/random_yolo26_sem.py FRAME.png ...   # in an empty folder

writes rand26-sem.pt, rand26-sem.onnx (320 px, Ultralytics' default ONNX export: the argmax baked
in, [1, 320, 320] class ids) and, per frame, ``onnx_<i>.npy`` (Ultralytics predicting with that
ONNX: a fixed 320 x 320 letterbox) and ``pt_<i>.npy`` (with the .pt: its rect letterbox, padded
only to a multiple of the stride). Run by tests/test_semantic_models.py in a subprocess, as
Ultralytics (AGPL) is optional.
"""
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from lsuv import unit_deviation  # tests/lsuv.py: this script's folder is on sys.path
from ultralytics import YOLO

frames = [cv2.imread(p) for p in sys.argv[1:]]
torch.manual_seed(0)
y = YOLO("yolo26n-sem.yaml")
m = y.model.eval()
x = np.stack([cv2.resize(f, (320, 320))[:, :, ::-1].transpose(2, 0, 1) for f in frames])
unit_deviation(m, torch.from_numpy(x.copy()).float() / 255)
y.save("rand26-sem.pt")
out = YOLO("rand26-sem.pt").export(format="onnx", imgsz=320, opset=17)
if Path(out).resolve() != Path("rand26-sem.onnx").resolve():
    shutil.move(out, "rand26-sem.onnx")
for name, model in (("onnx", YOLO("rand26-sem.onnx", task="semantic")), ("pt", YOLO("rand26-sem.pt"))):
    for i, f in enumerate(frames):
        r = model.predict(f, imgsz=320, verbose=False)[0]
        np.save(f"{name}_{i}.npy", r.semantic_mask.cpu().numpy().data)
