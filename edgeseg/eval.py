"""``edgeseg eval``: accuracy of a bundle on a labeled dataset, and fidelity to its FP32 source.

Instance heads are scored with pycocotools' COCOeval (mask and box mAP50-95, mAP50) against
Ultralytics YOLO-seg polygon labels rasterised at the source resolution; semantic heads by mIoU.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .data import load_dataset
from .errors import EdgesegError
from .report_samples import ReportSamples
from .heads import get_head
from .runtime.decode import FrameResult
from .runtime.sources import read_image

FIDELITY_CONF, FIDELITY_IOU = 0.25, 0.7  # Ultralytics' predict defaults: what a deployment runs with


MAX_LABEL_BYTES = 64 << 20


def read_polygons(label_file: Path, w: int, h: int) -> list[tuple[int, np.ndarray]]:
    """YOLO-seg labels: ``class x1 y1 x2 y2 ...`` normalised; returns (class, Nx2 pixel polygon)."""
    if not label_file.is_file():
        return []
    out = []
    if label_file.stat().st_size > MAX_LABEL_BYTES:
        raise EdgesegError(f"{label_file}: larger than {MAX_LABEL_BYTES >> 20} MB, not a label file; fix the label")
    try:
        text = label_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgesegError(f"{label_file}: not UTF-8 text; a YOLO-seg label file holds numbers only") from None
    for ln, line in enumerate(text.splitlines(), 1):
        vals = line.split()
        if not vals:
            continue
        try:
            cls = int(vals[0])
            pts = np.array(vals[1:], dtype=np.float64).reshape(-1, 2)
        except ValueError:
            raise EdgesegError(f"{label_file}:{ln}: not a YOLO-seg label line (class x1 y1 x2 y2 ...); "
                               "fix the label") from None
        # normalised: an absurd value would make a huge polygon (slow) or score 0. A shape that runs a
        # little past the image edge (synthetic or cropped data) is kept: rasterising clips it to the image
        if cls < 0 or not np.isfinite(pts).all() or (pts.size and (pts.min() < -1 or pts.max() > 2)):
            raise EdgesegError(f"{label_file}:{ln}: class must be >= 0 and coordinates finite and within 0..1 "
                               "(normalised to the image size; a shape may run past the edge by one image "
                               "size at most); fix the label")
        if len(pts) < 3:
            continue
        out.append((cls, pts * [w, h]))
    return out


def rasterize(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """A label polygon as Ultralytics rasterises it for training and validation.

    Its ``polygon2mask`` truncates vertices to int32 and fills with cv2.fillPoly (edge pixels
    included); models learn that convention, so scoring them against another rasteriser (such
    as pycocotools' polygon path) costs about 0.05 mask mAP on the reference set for no reason.
    """
    m = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(m, [poly.astype(np.int32)], 1)
    return m


def _low_res(w: int, h: int, model) -> tuple[int, int]:
    """Source size scaled to the prototype grid (Ultralytics scores masks at imgsz/4)."""
    ih, iw = model.input_hw
    s = min(ih / h, iw / w)
    ratio = 4.0
    for o in model.manifest.outputs:
        if o["role"] == "protos":
            ratio = iw / o["shape"][3]
    return max(int(round(w * s / ratio)), 1), max(int(round(h * s / ratio)), 1)


def _rle(mask: np.ndarray) -> dict:
    import pycocotools.mask as mu

    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def instance_to_coco(result: FrameResult, image_id: int) -> list[dict]:
    dets = []
    for inst in result.instances:
        x1, y1, x2, y2 = (float(v) for v in inst.box)
        dets.append({"image_id": image_id, "category_id": inst.class_id, "score": inst.score,
                     "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "segmentation": _rle(inst.full_mask(result.height, result.width))})
    return dets


def _coco_eval(gt: dict, dets: list[dict], iou_type: str) -> tuple[list[float], np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        if not dets:
            return [0.0] * 12, np.zeros(0)
        cd = cg.loadRes([dict(d) for d in dets])
        ev = COCOeval(cg, cd, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # per-class AP50-95 over all areas, maxDets=100
    p = ev.eval["precision"][:, :, :, 0, -1]
    per_class = np.array([np.mean(p[:, :, k][p[:, :, k] > -1]) if (p[:, :, k] > -1).any() else np.nan
                          for k in range(p.shape[2])])
    return list(ev.stats), per_class


def evaluate(model, data: str | Path, against=None, report: Path | None = None, limit: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Score ``model`` (an :class:`edgeseg.runtime.model.Model`) on the dataset's val split."""
    import pycocotools.mask as mu

    ds = load_dataset(data, split="val")
    images = ds.images[:limit] if limit else ds.images
    if not images:
        raise EdgesegError(f"{data}: the val split has no images; check its 'path' and 'val' entries")
    semantic = get_head(model.manifest.head["type"]).kind == "semantic"
    it: Any = images
    if progress:  # a bar on a terminal, a line every few seconds in a log
        from .progress import track
        it = track(images, "eval")
    to_model = _class_map(ds.names, model.names, data, ids_if_unnamed=not semantic)
    gt: dict = {"images": [], "annotations": [],
                "categories": [{"id": i, "name": n} for i, n in enumerate(model.names)]}
    gt_low: dict = {"images": [], "annotations": [], "categories": gt["categories"]}
    dets: list[dict] = []
    dets_low: list[dict] = []
    inter = union = None
    fid: dict[str, Any] = {"ref": 0, "test": 0, "matched": 0, "ious": [], "pixels": 0, "agree": 0}
    samples = ReportSamples(model, against) if report is not None else None  # which pictures the report shows
    missing_labels = 0
    for img_id, p in enumerate(it):
        frame = read_image(p)
        h, w = frame.shape[:2]
        gt["images"].append({"id": img_id, "width": w, "height": h, "file_name": p.name})
        lf = ds.label_path(p)
        if not lf.is_file():
            missing_labels += 1
        polys = read_polygons(lf, w, h)
        x, lb = model.preprocess(frame)
        outs = model.infer(x)
        res = model.decode(outs, lb)
        if samples is not None:
            samples.add(p, frame, [(_model_class(c, to_model, model.names, lf), q) for c, q in polys], outs, lb)
        if semantic:
            inter, union = _semantic_acc(res, polys, to_model, model.names, h, w, inter, union, lf)
            if against is not None:
                xr, lbr = against.preprocess(frame)
                ref = against.decode(against.infer(xr), lbr)
                fid["pixels"] += h * w
                fid["agree"] += int((ref.label_map == res.label_map).sum())
            continue
        lw, lh = _low_res(w, h, model)
        gt_low["images"].append({"id": img_id, "width": lw, "height": lh})
        for cls, poly in polys:
            cls = _model_class(cls, to_model, model.names, lf)
            full = rasterize(poly, h, w)
            low = cv2.resize(full, (lw, lh), interpolation=cv2.INTER_LINEAR)
            x1, y1 = poly.min(0)
            x2, y2 = poly.max(0)
            for g, m in ((gt, full), (gt_low, low)):
                rle = _rle(m)
                g["annotations"].append({"id": len(g["annotations"]) + 1, "image_id": img_id, "category_id": cls,
                                         "segmentation": rle, "area": float(mu.area(rle)),
                                         "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
        dets += instance_to_coco(res, img_id)
        dets_low += [dict(d, segmentation=_rle(cv2.resize(i.full_mask(h, w).astype(np.float32), (lw, lh),
                                                                interpolation=cv2.INTER_AREA) >= 0.5))
                     for d, i in zip(dets[len(dets) - len(res.instances):], res.instances)]
        if against is not None:
            from .fidelity import mask_iou, match_instances
            # fidelity at the deployment thresholds, not at mAP's conf=0.001
            xr, lbr = against.preprocess(frame)  # the reference may take another input size
            ref = against.decoder(against.infer(xr), lbr, conf=FIDELITY_CONF, iou=FIDELITY_IOU)
            dep = model.decoder(outs, lb, conf=FIDELITY_CONF, iou=FIDELITY_IOU)
            pairs = match_instances(ref, dep)
            fid["ref"] += len(ref.instances)
            fid["test"] += len(dep.instances)
            fid["matched"] += len(pairs)
            fid["ious"] += [mask_iou(ref.instances[r], dep.instances[t], h, w) for r, t, _ in pairs]
    if missing_labels == len(images):
        raise EdgesegError(f"{data}: none of the {len(images)} val images has a label file "
                           f"(looked for e.g. {ds.label_path(images[0])}); check the dataset's labels/ folder")
    out: dict[str, Any] = {"images": len(images), "bundle": str(model.bundle.path), "target": model.manifest.target,
                           "precision": model.manifest.precision, "head": model.manifest.head["type"],
                           "missing_labels": missing_labels}
    if model.manifest.fidelity.get("unusable"):
        out["unusable"] = model.manifest.fidelity["unusable"]  # marked at conversion: say so beside the figures
    if semantic:
        iou = inter / np.maximum(union, 1)
        present = union > 0
        out["miou"] = round(float(iou[present].mean()), 4) if present.any() else 0.0
        out["iou_per_class"] = {n: round(float(v), 4) for n, v, ok in zip(model.names, iou, present) if ok}
    else:
        ms, mpc = _coco_eval(gt_low, dets_low, "segm")
        fs, _ = _coco_eval(gt, dets, "segm")
        bs, _ = _coco_eval(gt, [{k: v for k, v in d.items() if k != "segmentation"} for d in dets], "bbox")
        out.update(mask_map50_95=round(ms[0], 4), mask_map50=round(ms[1], 4),
                   box_map50_95=round(bs[0], 4), box_map50=round(bs[1], 4),
                   mask_map50_95_full_res=round(fs[0], 4), mask_map50_full_res=round(fs[1], 4),
                   metric="pycocotools COCOeval; masks compared at prototype resolution as Ultralytics does "
                          "(full_res: at source resolution); labels rasterised as Ultralytics trains on them")
        names = [c["name"] for c in gt["categories"]]
        out["mask_ap_per_class"] = {names[i]: round(float(v), 4) for i, v in enumerate(mpc) if not np.isnan(v)}
    if against is not None and semantic:
        out["fidelity"] = {"reference": str(against.bundle.path),
                           "pixel_agreement": round(fid["agree"] / max(fid["pixels"], 1), 5)}
    elif against is not None:
        out["fidelity"] = {"reference": str(against.bundle.path), "conf": FIDELITY_CONF,
                           "detections_reference": fid["ref"],
                           "detections": fid["test"], "matched": fid["matched"],
                           "detections_kept": round(fid["matched"] / fid["ref"], 4) if fid["ref"] else 1.0,
                           "mean_mask_iou": round(float(np.mean(fid["ious"])), 4) if fid["ious"] else None}
    out["conversion_fidelity"] = model.manifest.fidelity
    q = model.manifest.quantization
    if "accuracy" in q:  # the label-free estimate (and --max-drop search) recorded at conversion
        out["conversion_accuracy"] = {k: q[k] for k in ("accuracy", "max_drop") if k in q}
    if report is not None:
        write_report(Path(report), out, samples)
    return out


def _class_map(ds_names: list[str], model_names: list[str], data, ids_if_unnamed: bool = True) -> list[int] | None:
    """Dataset class id -> model class id, by name; None where ids already agree. A dataset whose
    names the model lacks is refused: scoring ids that mean other classes gives a plausible number.
    ``ids_if_unnamed``: a model without names (class0, ...) is scored by id (not for semantic
    models, whose id 0 is the background the dataset does not list)."""
    if not ds_names or list(ds_names) == list(model_names):
        return None
    index = {n: i for i, n in enumerate(model_names)}
    missing = [n for n in ds_names if n not in index]
    if not missing:
        return [index[n] for n in ds_names]
    if ids_if_unnamed and all(n == f"class{i}" for i, n in enumerate(model_names)):
        return None
    raise EdgesegError(f"{data}: dataset classes {missing[:5]} are not among the model's classes {list(model_names)}; "
                       "use a dataset named like the model, or convert with --names in the dataset's order")


def _model_class(cls: int, to_model: list[int] | None, model_names: list[str], label_file: Path) -> int:
    k = cls if to_model is None else (to_model[cls] if cls < len(to_model) else -1)
    if not 0 <= k < len(model_names):
        raise EdgesegError(f"{label_file}: class id {cls} names no class of the model {list(model_names)}; "
                           "fix the label or the dataset's names")
    return k


def _semantic_acc(res: FrameResult, polys, to_model: list[int] | None, model_names, h, w, inter, union, lf):
    """Accumulate per-class intersection/union; dataset ids mapped to the model's by ``_class_map``."""
    n = len(model_names)
    gt = np.full((h, w), model_names.index("background") if "background" in model_names else 0, dtype=np.uint8)
    for cls, poly in polys:
        k = _model_class(cls, to_model, model_names, lf)
        cv2.fillPoly(gt, [np.round(poly).astype(np.int32)], int(k))
    pred = res.label_map
    inter = np.zeros(n) if inter is None else inter
    union = np.zeros(n) if union is None else union
    for k in range(n):
        a, b = gt == k, pred == k
        inter[k] += (a & b).sum()
        union[k] += (a | b).sum()
    return inter, union


def write_report(folder: Path, metrics: dict, samples: list) -> None:
    """A folder a person would rather look at: side-by-side masks, per-class AP, per-role fidelity."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = [f"# edgeseg eval: {metrics['bundle']}", "",
             f"{metrics['images']} images, target {metrics['target']}, {metrics['precision']}", ""]
    if "mask_map50_95" in metrics:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {metrics[k]} |" for k in
                                                         ("mask_map50_95", "mask_map50", "box_map50_95", "box_map50")]
        lines += ["", "## Mask AP50-95 per class", "", "| class | AP |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in metrics.get("mask_ap_per_class", {}).items()]
    if "miou" in metrics:
        lines += [f"mIoU: {metrics['miou']}", ""] + [f"- {k}: {v}" for k, v in metrics["iou_per_class"].items()]
    cf = metrics.get("conversion_fidelity") or {}
    if "cosine" in cf:
        lines += ["", "## Fidelity per output role (held-back calibration images)", "",
                  "| role | mean cosine | min cosine | max abs error |", "| --- | --- | --- | --- |"]
        lines += [f"| {r} | {cf['cosine'][r]} | {cf['cosine_min'][r]} | {cf['max_abs_error'][r]} |"
                  for r in cf["cosine"]]
    if "conversion_accuracy" in metrics:
        from .convert.accuracy import report_lines

        lines += report_lines(metrics["conversion_accuracy"])
    if "fidelity" in metrics:
        lines += ["", "## Against the FP32 bundle", "", "```", json.dumps(metrics["fidelity"], indent=1), "```"]
    if samples is not None:
        lines += ["", "## Worst agreement first, then the median and the best", ""]
    for k, (caption, pic, _) in enumerate(samples.pictures() if samples is not None else []):
        cv2.imwrite(str(folder / f"side_by_side_{k}.jpg"), pic)
        lines += ["", caption, "", f"![{caption}](side_by_side_{k}.jpg)"]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
