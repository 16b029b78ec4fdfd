"""Train a small semantic-segmentation model on synthetic shape scenes (CPU, about 100 s on 2 cores),
then export it to ONNX (and TorchScript) for `edgeseg convert`.

    pip install torch==2.13.0            # CPU build; only this recipe needs torch
    python examples/semantic/shapes_semantic.py --out work/semantic --steps 1500
    edgeseg convert work/semantic/shapes_semantic.onnx --target onnxruntime --int8
    edgeseg eval bundles/shapes_semantic_onnxruntime_int8 --data work/semantic/synthetic_val/data.yaml
    edgeseg eval bundles/shapes_semantic_onnxruntime_int8 --data edgeseg/assets/shapes/shapes.yaml

Classes are matched to a dataset's by name (the model adds "background"), so the held-out synthetic
set and the reference shapes set (other backgrounds, a domain gap) both score it by mIoU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np

NAMES = ["background", "circle", "rectangle", "triangle", "star", "hexagon"]


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "rectangle":
        a = np.array([angle + k * math.pi / 2 + math.pi / 4 for k in range(4)])
        rr = np.full(4, r)
    elif kind == "triangle":
        a, rr = np.array([angle + k * 2 * math.pi / 3 for k in range(3)]), np.full(3, r)
    elif kind == "hexagon":
        a, rr = np.array([angle + k * math.pi / 3 for k in range(6)]), np.full(6, r)
    else:  # star
        a = np.array([angle + k * math.pi / 5 for k in range(10)])
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)


def synth_scene(rng: np.random.Generator, size: int, polys: list | None = None,
                width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A BGR scene over noise/gradient background and its label map (0 = background).

    ``polys``, when given, receives (class index among the shapes, Nx2 pixel polygon) per shape
    in drawing order (later shapes cover earlier ones in the label map, as in the picture).
    """
    width = width or size
    kind = rng.integers(3)
    if kind == 0:  # saturated colour blotches, like the reference scenes' noise backgrounds
        cells = int(rng.choice([8, 12, 16, 24]))
        img = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        img = cv2.resize(img, (width, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:
        g = np.linspace(0, 1, width)[None, :, None] * rng.uniform(0, 255, 3) + rng.uniform(0, 128, 3)
        img = np.clip(np.repeat(g, size, 0) + rng.normal(0, 12, (size, width, 3)), 0, 255).astype(np.uint8)
    else:
        img = np.clip(rng.normal(128, 60, (size, width, 3)), 0, 255).astype(np.uint8)
    lab = np.zeros((size, width), np.uint8)
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(1, len(NAMES)))
        r = rng.uniform(0.06, 0.22) * size
        cx, cy = rng.uniform(r * 0.5, width - r * 0.5), rng.uniform(r * 0.5, size - r * 0.5)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if NAMES[cls] == "circle":
            cv2.circle(img, (int(cx), int(cy)), int(r), color, -1, cv2.LINE_AA)
            cv2.circle(lab, (int(cx), int(cy)), int(r), cls, -1)
            if polys is not None:
                t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
                polys.append((cls - 1, np.stack([int(cx) + int(r) * np.cos(t), int(cy) + int(r) * np.sin(t)], 1)))
        else:
            poly = _polygon(NAMES[cls], cx, cy, r, rng.uniform(0, 2 * math.pi)).astype(np.int32)
            cv2.fillPoly(img, [poly], color, cv2.LINE_AA)
            cv2.fillPoly(lab, [poly], cls)
            if polys is not None:
                polys.append((cls - 1, poly.astype(np.float64)))
            if rng.random() < 0.3:  # some shapes have an outline of another colour
                cv2.polylines(img, [poly], True, tuple(int(c) for c in rng.integers(0, 256, 3)), 2, cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):  # thin distractor lines cross shapes and background alike
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])),
                 tuple(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(1, 3)), cv2.LINE_AA)
    return img, lab


def write_dataset(folder: Path, n: int = 40, size: int = 240, width: int = 320, seed: int = 12345) -> Path:
    """A labeled held-out set in Ultralytics YOLO-seg format (non-square frames on purpose)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        polys: list = []
        img, _ = synth_scene(rng, size, polys, width)
        cv2.imwrite(str(folder / "images" / f"{i:04d}.png"), img)
        lines = [" ".join([str(c)] + [f"{x / width:.5f} {y / size:.5f}" for x, y in p]) for c, p in polys]
        (folder / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {k}: {v}" for k, v in enumerate(NAMES[1:]))
    (folder / "data.yaml").write_text(f"path: .\nval: images\ntrain: images\nnames:\n{names}\n")
    return folder / "data.yaml"


def build_model(n_classes: int):
    from torch import nn

    def block(i, o, s):
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class TinySeg(nn.Module):
        """Encoder to 1/16, decoder back to 1/4 with skip connections; logits at 1/4 resolution."""

        def __init__(self):
            super().__init__()
            self.e1 = nn.Sequential(block(3, 16, 2), block(16, 24, 2))      # 1/4
            self.e2 = nn.Sequential(block(24, 48, 2), block(48, 48, 1))     # 1/8
            self.e3 = nn.Sequential(block(48, 96, 2), block(96, 96, 1))     # 1/16
            self.d2 = block(96 + 48, 48, 1)
            self.d1 = block(48 + 24, 32, 1)
            self.head = nn.Conv2d(32, n_classes, 1)
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

        def forward(self, x):
            import torch

            f1 = self.e1(x)
            f2 = self.e2(f1)
            f3 = self.e3(f2)
            y = self.d2(torch.cat([self.up(f3), f2], 1))
            y = self.d1(torch.cat([self.up(y), f1], 1))
            return self.head(y)

    return TinySeg()


def train(out: str | Path, steps: int = 1500, size: int = 128, batch: int = 16, seed: int = 0, log=print) -> dict:
    """Train, then export at the training size (objects keep the scale the model learned)."""
    import torch
    import torch.nn.functional as F

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # before minutes of training, not after
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(len(NAMES))
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    t0 = time.time()
    model.train()
    for step in range(steps):
        imgs, labs = zip(*(synth_scene(rng, size) for _ in range(batch)))
        x = torch.from_numpy(np.stack(imgs)[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(np.stack([cv2.resize(lb, (size // 4, size // 4), interpolation=cv2.INTER_NEAREST)
                                       for lb in labs])).long()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    model.eval()
    dummy = torch.zeros(1, 3, size, size)
    onnx_path = out / "shapes_semantic.onnx"
    torch.onnx.export(model, dummy, str(onnx_path), input_names=["images"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    import onnx

    m = onnx.load(str(onnx_path))
    # Image.NominalPixelRange (ONNX's standard key): trained on pixels / 255, which edgeseg reads and reports
    for k, v in {"names": str(dict(enumerate(NAMES))), "task": "semantic", "imgsz": f"[{size}, {size}]",
                 "Image.NominalPixelRange": "Normalized_0_1"}.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(onnx_path))
    ts_path = out / "shapes_semantic.torchscript"
    traced = torch.jit.trace(model, dummy)
    torch.jit.save(traced, str(ts_path),
                   _extra_files={"config.txt": json.dumps({"names": dict(enumerate(NAMES)),
                                                           "task": "semantic", "imgsz": [size, size]})})
    data = write_dataset(out / "synthetic_val")
    return {"onnx": str(onnx_path), "torchscript": str(ts_path), "data": str(data), "steps": steps,
            "seconds": round(time.time() - t0, 1),
            "final_loss": round(float(loss.item()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("work/semantic"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args()
    print(json.dumps(train(a.out, a.steps, a.size)))


if __name__ == "__main__":
    main()
