"""How closely a converted model follows its FP32 source, per output role and after decoding.

Never one whole-tensor cosine: in a concatenated YOLO output the box rows (hundreds of pixels)
dominate it, and it stays at 0.9999 while the class rows have collapsed to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .runtime.decode import FrameResult, dequantize
from .runtime.nms import box_iou


def _role_arrays(outs: dict, outputs: list[dict], nc: int | None) -> dict[str, np.ndarray]:
    """Flatten every output into per-role vectors; class values compared as probabilities."""
    acc: dict[str, list[np.ndarray]] = {}
    for o in outputs:
        if o["role"] == "labels":  # class ids: no cosine means anything; pixel agreement measures them
            continue
        x = dequantize(outs[o["name"]], o.get("quant"))
        if o["role"] == "det" and nc:
            d = x[0]
            acc.setdefault("box", []).append(d[:4].ravel())
            acc.setdefault("cls", []).append(d[4:4 + nc].ravel())
            acc.setdefault("coef", []).append(d[4 + nc:].ravel())
        elif o["role"] == "cls_logits":
            acc.setdefault("cls", []).append((1 / (1 + np.exp(-np.clip(x, -80, 80)))).ravel())
        else:
            role = {"box_dfl": "box", "protos": "proto"}.get(o["role"], o["role"])
            acc.setdefault(role, []).append(x.ravel())
    return {k: np.concatenate(v).astype(np.float64) for k, v in acc.items()}


def role_vectors(outs: dict, manifest) -> dict[str, np.ndarray]:
    """Per-role vectors of one frame's outputs, for a bundle's manifest."""
    from .heads import get_head

    nc = get_head(manifest.head["type"]).concat_classes(manifest.head)
    return _role_arrays(outs, manifest.outputs, nc)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float(na == nb)
    return float(a @ b / (na * nb))


def match_instances(ref: FrameResult, test: FrameResult, iou_thr: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy same-class matching by box IoU, best reference score first: (ref_idx, test_idx, iou)."""
    if not ref.instances or not test.instances:
        return []
    rb = np.stack([i.box for i in ref.instances])
    tb = np.stack([i.box for i in test.instances])
    iou = box_iou(rb, tb)
    rc = np.array([i.class_id for i in ref.instances])
    tc = np.array([i.class_id for i in test.instances])
    iou[rc[:, None] != tc[None, :]] = 0
    used: set[int] = set()
    pairs = []
    for r in np.argsort([-i.score for i in ref.instances]):
        cand = [(iou[r, t], t) for t in range(len(tc)) if t not in used and iou[r, t] >= iou_thr]
        if cand:
            v, t = max(cand)
            used.add(t)
            pairs.append((int(r), int(t), float(v)))
    return pairs


def mask_iou(a, b, h: int, w: int) -> float:
    ma, mb = a.full_mask(h, w), b.full_mask(h, w)
    union = (ma | mb).sum()
    return float((ma & mb).sum() / union) if union else 1.0


def compare(frames: Iterable[np.ndarray], run_ref: Callable, run_test: Callable, preprocess: Callable,
            decode: Callable, outputs: list[dict], nc: int | None) -> dict:
    """Per-role cosine and decoded agreement of two runners over the same frames."""
    cos: dict[str, list[float]] = {}
    err: dict[str, float] = {}
    n_ref = n_test = n_match = 0
    ious: list[float] = []
    box_err: list[float] = []
    agree: list[float] = []
    n_frames = 0
    for frame in frames:
        n_frames += 1
        x, lb = preprocess(frame)
        ro, to = run_ref(x), run_test(x)
        ra, ta = _role_arrays(ro, outputs, nc), _role_arrays(to, outputs, nc)
        for k in ra:
            cos.setdefault(k, []).append(cosine(ra[k], ta[k]))
            err[k] = max(err.get(k, 0.0), float(np.abs(ra[k] - ta[k]).max()))
        if decode is None:
            continue
        rr, tr = decode(ro, lb), decode(to, lb)
        if rr.label_map is not None:
            agree.append(float((rr.label_map == tr.label_map).mean()))
            continue
        n_ref += len(rr.instances)
        n_test += len(tr.instances)
        for r, t, _ in match_instances(rr, tr):
            n_match += 1
            box_err.append(float(np.abs(rr.instances[r].box - tr.instances[t].box).max()))
            ious.append(mask_iou(rr.instances[r], tr.instances[t], rr.height, rr.width))
    rep: dict = {"images": n_frames,
                 "cosine": {k: round(float(np.mean(v)), 5) for k, v in cos.items()},
                 "cosine_min": {k: round(float(np.min(v)), 5) for k, v in cos.items()},
                 "max_abs_error": {k: round(v, 5) for k, v in err.items()}}
    if agree:
        rep["pixel_agreement"] = round(float(np.mean(agree)), 5)
    elif decode is not None:
        rep.update({"detections_fp32": n_ref, "detections_converted": n_test, "matched": n_match,
                    "detections_kept": round(n_match / n_ref, 4) if n_ref else 1.0,
                    "mean_mask_iou": round(float(np.mean(ious)), 4) if ious else None,
                    "mean_box_error_px": round(float(np.mean(box_err)), 3) if box_err else None,
                    "max_box_error_px": round(float(np.max(box_err)), 3) if box_err else None})
    return rep
