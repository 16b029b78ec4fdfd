"""Turn a bundle's raw outputs into instances (or a label map) in source-frame pixels, in numpy.

Three YOLO-seg layouts are decoded:

* ``split`` — the per-scale head outputs edgeseg's converter exposes (DFL logits, class logits,
  coefficients per stride, plus prototypes). DFL (none for YOLO26: reg_max 1), anchors and sigmoid
  happen here, and only for anchors whose best class logit passes the threshold, so most of the
  grid is never decoded.
* ``concat`` — Ultralytics' own ``output0`` [1, 4+nc+nm, A] (xywh in input pixels, scores,
  coefficients) with ``output1`` prototypes.
* ``end2end`` — a YOLO26 end-to-end export's [1, k, 6+nm] (xyxy, score, class, coefficients),
  already past its top-k.

The one-to-many heads (YOLOv8/11, YOLO26's default export) go through NMS; YOLO26's one-to-one
head (``variant: one2one``) is decoded as Ultralytics does, top-k and no NMS.

Masks follow Ultralytics' ``process_mask(upsample=True)``: logits = coef @ protos, bilinearly
upsampled, thresholded at 0, cropped to the box. We evaluate that only inside each kept box and
warp straight from prototype resolution to the source frame, never building full-frame masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .nms import nms
from .preprocess import Letterbox

# Candidates kept (best scores first) before NMS or top-k: Ultralytics keeps 30000, more than
# the 8400 anchors of a 640 px model; this bound is what keeps a very low --conf (or a badly
# calibrated model) from costing seconds and gigabytes per frame.
MAX_NMS = 30000


@dataclass
class Instance:
    """One detected object. ``mask`` covers the frame region starting at (``mask_x``, ``mask_y``)."""

    class_id: int
    class_name: str
    score: float
    box: np.ndarray  # [x1, y1, x2, y2] in source-frame pixels
    mask: np.ndarray | None = None  # bool, cropped to the box
    mask_x: int = 0
    mask_y: int = 0
    track_id: int | None = None  # set when tracking (--track, model.track): the same object keeps it

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """The instance mask as a full-frame bool array (allocates; use for export only)."""
        out = np.zeros((height, width), dtype=bool)
        if self.mask is not None:
            h, w = self.mask.shape
            out[self.mask_y:self.mask_y + h, self.mask_x:self.mask_x + w] = self.mask
        return out

    @property
    def area(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0


# Semantic label maps: pixels of a class that --classes left out. Not 0, which is a real class
# in many models (Cityscapes' road): those pixels must not be reported or drawn as it.
NOT_ASKED = 255


@dataclass
class FrameResult:
    """What a bundle found in one frame."""

    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    label_map: np.ndarray | None = None  # semantic heads: [H, W] class ids, NOT_ASKED where filtered out
    names: list[str] = field(default_factory=list)
    # set when tracking: what happened this frame (appeared, left, line/zone crossings) and the counts
    events: list[dict] | None = None
    counts: dict | None = None

    def classes_present(self) -> list[int]:
        """Semantic heads: the class ids in the label map, without the filtered-out pixels."""
        if self.label_map is None:
            return []
        return [int(k) for k in np.unique(self.label_map) if k != NOT_ASKED]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def dequantize(x: np.ndarray, quant: dict | None) -> np.ndarray:
    """Float32 view of a runtime output; integer outputs use the manifest's scale and zero point."""
    if x.dtype == np.float32:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if not quant:
            raise ValueError("integer output without quantization parameters in the manifest")
        return (x.astype(np.float32) - np.float32(quant["zero_point"])) * np.float32(quant["scale"])
    return x.astype(np.float32)


# Pixels up to which a mask window's coefficients x prototypes product goes to BLAS. OpenBLAS
# splits a [1, 32] x [32, N] product over threads from N ~ 288 on (a 17x17 prototype window): on a
# 2-core board those threads wake, then spin, on the cores the inference needs (a 640 px frame's
# large windows decoded 2-3x slower). Larger windows take einsum: one thread, no copy of the window.
_DOT_PIXELS = 256


def _coef_dot(c: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``c @ p`` for coefficients [nm] and a prototype window [nm, h, w] (a view): [h, w] float32."""
    nm, h, w = p.shape
    if h * w <= _DOT_PIXELS:
        return np.dot(c[None], p.reshape(nm, -1)).reshape(h, w)
    return np.einsum("k,khw->hw", c, p)


def _mask_in_frame(logits_fn, box_src: np.ndarray, lb: Letterbox,
                   proto_stride_x: float, proto_stride_y: float, mh: int, mw: int):
    """Binary mask of one instance over the source pixels of its box.

    ``logits_fn(y0, y1, x0, x1)`` returns prototype-resolution mask logits of that window. A
    source pixel u maps to prototype coordinate ((u + 0.5) * sx + pad_x) / stride - 0.5, the
    half-pixel convention of bilinear upsampling with align_corners=False.
    """
    u0, v0 = max(int(math.ceil(box_src[0])), 0), max(int(math.ceil(box_src[1])), 0)
    u1, v1 = min(int(math.ceil(box_src[2])), lb.src_w), min(int(math.ceil(box_src[3])), lb.src_h)
    if u1 <= u0 or v1 <= v0:
        return None, u0, v0
    ax = lb.scale_x / proto_stride_x
    ay = lb.scale_y / proto_stride_y
    bx = (0.5 * lb.scale_x + lb.pad_x) / proto_stride_x - 0.5
    by = (0.5 * lb.scale_y + lb.pad_y) / proto_stride_y - 0.5
    px0 = min(max(int(math.floor(ax * u0 + bx)), 0), mw - 1)
    px1 = min(max(int(math.floor(ax * (u1 - 1) + bx)) + 2, px0 + 1), mw)
    py0 = min(max(int(math.floor(ay * v0 + by)), 0), mh - 1)
    py1 = min(max(int(math.floor(ay * (v1 - 1) + by)) + 2, py0 + 1), mh)
    logits = logits_fn(py0, py1, px0, px1)
    # dst (u_local, v_local) -> src (x_local, y_local) in the cropped logits window
    m = np.array([[ax, 0, ax * u0 + bx - px0], [0, ay, ay * v0 + by - py0]], dtype=np.float64)
    up = cv2.warpAffine(logits, m, (u1 - u0, v1 - v0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_REPLICATE)
    return up > 0, u0, v0


class YoloSegDecoder:
    """Decoder for YOLO-seg heads in either layout; build once per bundle, call per frame."""

    def __init__(self, head: dict, outputs: list[dict], names: list[str], input_hw: tuple[int, int]):
        self.layout = head["layout"]
        self.nc = int(head["num_classes"])
        self.nm = int(head["num_masks"])
        self.reg_max = int(head.get("reg_max") or 16)
        self.one2one = head.get("variant") == "one2one"
        self.names = list(names)
        self.input_hw = input_hw
        self.quant = {o["name"]: o.get("quant") for o in outputs}
        by_role: dict[str, list[dict]] = {}
        for o in outputs:
            by_role.setdefault(o["role"], []).append(o)
        self.protos_name = by_role["protos"][0]["name"]
        if self.layout == "split":
            key = lambda o: o["scale"] if isinstance(o["scale"], int) else 0  # noqa: E731
            self.box_names = [o["name"] for o in sorted(by_role["box_dfl"], key=key)]
            self.cls_names = [o["name"] for o in sorted(by_role["cls_logits"], key=key)]
            self.coef_names = [o["name"] for o in sorted(by_role["coef"], key=key)]
            # one output per scale, or each role's scales joined ([1, C, anchors]) with the grids in the head
            grids = head.get("grids") or [{"h": o["shape"][2], "w": o["shape"][3], "stride": o["stride"]}
                                          for o in sorted(by_role["cls_logits"], key=key)]
            ax, ay, st = [], [], []
            for gr in grids:
                h, w, s = int(gr["h"]), int(gr["w"]), gr["stride"]
                gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
                ax.append(gx.ravel() + 0.5)
                ay.append(gy.ravel() + 0.5)
                st.append(np.full(h * w, s, dtype=np.float32))
            # where each scale's anchors start in the joined anchor index: survivors are gathered
            # from each scale's own output, the full grid is never copied into one array
            self.offsets = np.cumsum([0] + [len(a) for a in ax])
            self.anchor_x = np.concatenate(ax)
            self.anchor_y = np.concatenate(ay)
            self.anchor_stride = np.concatenate(st)
            self.dfl_bins = np.arange(self.reg_max, dtype=np.float32)
        elif self.layout in ("concat", "end2end"):
            self.det_name = by_role["det"][0]["name"]
        else:
            raise ValueError(f"unknown YOLO-seg layout {self.layout!r}")

    def _parts(self, outs: dict, names: list[str]) -> list[np.ndarray]:
        """Each output of ``names`` as [C, anchors] (a view; joined outputs are one part)."""
        return [outs[n].reshape(outs[n].shape[1], -1) for n in names]

    def _gather(self, outs: dict, names: list[str], idx: np.ndarray) -> np.ndarray:
        """[C, len(idx)] float32: the columns ``idx`` of the outputs ``names`` joined along the
        anchors, dequantized; only those columns are copied or converted."""
        parts = self._parts(outs, names)
        if len(parts) == 1:
            return dequantize(parts[0][:, idx], self.quant.get(names[0]))
        scale = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((parts[0].shape[0], len(idx)), dtype=np.float32)
        for s, (n, p) in enumerate(zip(names, parts)):
            sel = np.flatnonzero(scale == s)
            if len(sel):
                out[:, sel] = dequantize(p[:, idx[sel] - self.offsets[s]], self.quant.get(n))
        return out

    def candidates(self, outs: dict, conf: float, classes: list[int] | None, max_det: int = 300):
        """Boxes (xyxy, input pixels), scores, class ids and coefficients above ``conf``.

        For a one-to-one head these are already the final detections (top-k, no NMS to follow)."""
        with np.errstate(all="ignore"):  # non-finite runtime outputs are filtered below, not warned about
            return self._candidates(outs, conf, classes, max_det)

    def _top(self, score: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` best scores, best first, ties in anchor order (as a stable sort)."""
        if len(score) <= k:
            return np.argsort(-score, kind="stable")
        part = np.argpartition(-score, k - 1)[:k]
        return part[np.argsort(-score[part], kind="stable")]

    def _candidates(self, outs: dict, conf: float, classes: list[int] | None, max_det: int):
        if self.layout == "end2end":
            det = dequantize(outs[self.det_name], self.quant.get(self.det_name))[0]  # [k, 6+nm], top-k done
            score = det[:, 4]
            keep = np.flatnonzero(score > conf)
            cid = det[keep, 5].astype(np.int64)
            if classes is not None:
                keep, cid = keep[np.isin(cid, classes)], cid[np.isin(cid, classes)]
            keep, cid = keep[:max_det], cid[:max_det]
            boxes, score, coef = det[keep, :4], score[keep], det[keep, 6:6 + self.nm]
            idx = keep
        else:
            if self.layout == "split":
                # the threshold is applied to raw logits (sigmoid is monotonic): only survivors see a sigmoid
                thr = -np.inf if conf <= 0 else (np.inf if conf >= 1 else math.log(conf / (1 - conf)))
                parts = self._parts(outs, self.cls_names)
                best = np.concatenate([dequantize(p, self.quant.get(n)).max(0)
                                       for n, p in zip(self.cls_names, parts)])
                cls_at = lambda i: self._gather(outs, self.cls_names, i)  # noqa: E731
            else:
                det = dequantize(outs[self.det_name], self.quant.get(self.det_name))[0]  # [4+nc+nm, A]
                cls = det[4:4 + self.nc]
                thr = conf
                best = cls.max(0)
                cls_at = lambda i: cls[:, i]  # noqa: E731
            idx = np.flatnonzero(best > thr)
            if len(idx) == 0:
                return None
            if self.one2one:
                # Ultralytics' end-to-end top-k: the max_det best anchors, then the max_det best
                # (anchor, class) pairs among them; an anchor may yield several classes.
                idx = idx[self._top(best[idx], max_det)]
                sub = cls_at(idx)
                ci, ai = np.nonzero(sub > thr)
                pick = self._top(sub[ci, ai], max_det)
                ci, ai = ci[pick], ai[pick]
                idx, cid, score = idx[ai], ci, sub[ci, ai]
            else:
                cid = cls_at(idx).argmax(0)
                score = best[idx]
            if self.layout == "split":
                score = _sigmoid(score)
            if classes is not None:
                keep = np.isin(cid, classes)
                idx, cid, score = idx[keep], cid[keep], score[keep]
            if len(idx) > MAX_NMS:
                top = self._top(score, MAX_NMS)
                idx, cid, score = idx[top], cid[top], score[top]
            if self.layout == "split":
                box = self._gather(outs, self.box_names, idx)
                if self.reg_max > 1:
                    dfl = box.reshape(4, self.reg_max, -1)
                    dfl = np.exp(dfl - dfl.max(1, keepdims=True))
                    dist = (dfl * self.dfl_bins[None, :, None]).sum(1) / dfl.sum(1)  # [4, n] ltrb in grid cells
                else:
                    dist = box  # YOLO26: the regression is the ltrb distance itself
                s = self.anchor_stride[idx]
                x, y = self.anchor_x[idx], self.anchor_y[idx]
                boxes = np.stack([(x - dist[0]) * s, (y - dist[1]) * s, (x + dist[2]) * s, (y + dist[3]) * s], 1)
                coef = self._gather(outs, self.coef_names, idx).T
            else:
                xywh = det[:4, idx].T
                boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
                coef = det[4 + self.nc:4 + self.nc + self.nm, idx].T
        if len(idx) == 0:
            return None
        # A runtime can hand back NaN/inf (overflowed FP16, a broken INT8 scale): such anchors are
        # dropped rather than allowed to poison NMS or the masks.
        ok = np.isfinite(boxes).all(1) & np.isfinite(coef).all(1) & np.isfinite(score)
        if not ok.all():
            boxes, score, cid, coef = boxes[ok], score[ok], cid[ok], coef[ok]
            if len(score) == 0:
                return None
        return boxes.astype(np.float32), score.astype(np.float32), cid, coef.astype(np.float32)

    def __call__(self, outs: dict, lb: Letterbox, conf: float = 0.25, iou: float = 0.7,
                 classes: list[int] | None = None, max_det: int = 300, masks: bool = True) -> FrameResult:
        # non-finite runtime outputs are dropped or read as 0 / +-1e4 below, not warned about
        with np.errstate(all="ignore"):
            return self._decode(outs, lb, conf, iou, classes, max_det, masks)

    def _decode(self, outs: dict, lb: Letterbox, conf: float, iou: float, classes: list[int] | None,
                max_det: int, masks: bool) -> FrameResult:
        res = FrameResult(lb.src_w, lb.src_h, names=self.names)
        cand = self.candidates(outs, conf, classes, max_det)
        if cand is None:
            return res
        boxes, score, cid, coef = cand
        if self.one2one or self.layout == "end2end":
            keep = np.arange(min(len(score), max_det))  # trained NMS-free: the top-k is the answer
        else:
            keep = nms(boxes, score, cid, iou, max_det)
        boxes, score, cid, coef = boxes[keep], score[keep], cid[keep], coef[keep]
        src_boxes = lb.to_source(boxes)
        protos = outs[self.protos_name][0]
        pq = self.quant.get(self.protos_name)
        nm, mh, mw = protos.shape
        psx, psy = self.input_hw[1] / mw, self.input_hw[0] / mh

        def window(c: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            """coef @ prototypes over one box's window, dequantizing only that window. Non-finite
            prototypes (an overflowed FP16 runtime) are read as 0 / +-1e4, checked on the window's
            logits: a full-frame nan_to_num cost more than the rest of the masks."""
            p = dequantize(protos[:, y0:y1, x0:x1], pq)
            logits = _coef_dot(c, p)
            if not np.isfinite(logits.sum()):  # one reduction; a finite overflow just takes the slow path
                logits = _coef_dot(c, np.nan_to_num(p, nan=0.0, posinf=1e4, neginf=-1e4))
            return logits

        for k in range(len(keep)):
            c = coef[k]
            inst = Instance(int(cid[k]), self.names[cid[k]] if cid[k] < len(self.names) else str(cid[k]),
                            float(score[k]), src_boxes[k])
            if masks:
                fn = lambda y0, y1, x0, x1, c=c: window(c, y0, y1, x0, x1)  # noqa: E731
                m, mx, my = _mask_in_frame(fn, src_boxes[k], lb, psx, psy, mh, mw)
                # Like Ultralytics, an instance whose mask is empty is not reported.
                if m is None or not m.any():
                    continue
                inst.mask, inst.mask_x, inst.mask_y = m, mx, my
            res.instances.append(inst)
        return res


# Semantic logits are interpolated at class borders a chunk of pixels at a time: the chunk's
# C x pixels floats stay near this many bytes whatever the frame size and class count.
SEMANTIC_BAND_BYTES = 16 << 20


def _taps(n_dst: int, scale: float, pad: float, in_size: int, n_src: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps (align_corners=False) along one axis from a model output of ``n_src`` cells
    (covering ``in_size`` model-input pixels) to ``n_dst`` frame pixels.

    Frame pixel u's centre sits at model-input coordinate (u + 0.5) * scale + pad, i.e. output
    coordinate ((u + 0.5) * scale + pad) * n_src / in_size - 0.5; taps clamp at the edges as
    torch's ``interpolate(..., align_corners=False)`` does. One sample from the model's own
    resolution: no crop to whole cells (which shifts the map by up to half a cell when the
    letterbox padding is not a multiple of the output stride) and no second resampling.
    """
    x = ((np.arange(n_dst, dtype=np.float64) + 0.5) * scale + pad) * (n_src / in_size) - 0.5
    x = np.clip(x, 0, n_src - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_src - 1)
    w1 = (x - i0).astype(np.float32)
    return i0, i1, 1 - w1, w1


def _cells(n_dst: int, scale: float, pad: int, in_size: int, n_src: int) -> np.ndarray:
    """Nearest cell of a class-id map per frame pixel, per axis, as torch's ``interpolate(mode="nearest")``
    picks it (index floor(dst * in / out)) at each step of Ultralytics' semantic predictor: the map
    to the input size, the letterbox crop to the frame size. So a bundle's class map is Ultralytics'
    pixel for pixel, ids being ids: no blending between them is possible, only a choice of convention."""
    x = pad + np.floor(np.arange(n_dst, dtype=np.float64) * np.float32(scale))
    return np.clip(np.floor(x * np.float32(n_src / in_size)).astype(np.intp), 0, n_src - 1)


class SemanticDecoder:
    """Argmax (multi-class logits), threshold (one channel) or pass-through (labels) to frame size."""

    def __init__(self, head: dict, outputs: list[dict], names: list[str], input_hw: tuple[int, int]):
        self.names = list(names)
        self.out = outputs[0]
        self.kind = head.get("output", "logits")
        self.threshold = float(head.get("threshold", 0.0))
        self.input_hw = input_hw

    def __call__(self, outs: dict, lb: Letterbox, classes: list[int] | None = None, **_: object) -> FrameResult:
        raw = outs[self.out["name"]]
        # class ids are ids, never quantized values: only a float runtime output needs rounding
        y = (np.rint(raw) if raw.dtype.kind == "f" else raw)[0] if self.kind == "labels" \
            else dequantize(raw, self.out.get("quant"))[0]
        oh, ow = y.shape[-2:]
        (ih, iw), (sh, sw) = self.input_hw, (lb.src_h, lb.src_w)
        if self.kind == "labels":
            rows = _cells(sh, lb.scale_y, lb.pad_y, ih, oh)
            cols = _cells(sw, lb.scale_x, lb.pad_x, iw, ow)
            full = y[rows[:, None], cols[None, :]].astype(np.uint8)
        else:
            full = self._upsampled_labels(y.reshape(-1, oh, ow), lb)
        if classes is not None:
            keep = np.zeros(256, dtype=bool)
            keep[[c for c in classes if 0 <= c < NOT_ASKED]] = True
            full[~keep[full]] = NOT_ASKED
        return FrameResult(lb.src_w, lb.src_h, label_map=full, names=self.names)

    def _upsampled_labels(self, y: np.ndarray, lb: Letterbox) -> np.ndarray:
        """Argmax (or threshold) of the logits bilinearly upsampled to the frame (see :func:`_taps`).

        A frame pixel whose four surrounding logit cells share one label has that label: the
        interpolated logits are a convex combination of the four, so the winner stays the winner.
        Only pixels between cells of different labels (class borders) are interpolated in full,
        in chunks of bounded size."""
        c, oh, ow = y.shape
        (ih, iw), (sh, sw) = self.input_hw, (lb.src_h, lb.src_w)
        cell = (y[0] > self.threshold) if c == 1 else y.argmax(0)
        cell = cell.astype(np.uint8)
        ry0, ry1, wy0, wy1 = _taps(sh, lb.scale_y, lb.pad_y, ih, oh)
        cx0, cx1, wx0, wx1 = _taps(sw, lb.scale_x, lb.pad_x, iw, ow)
        # uniform[i, j]: cells (i, j), (i, j + 1), (i + 1, j), (i + 1, j + 1) share a label (edges replicated)
        e = np.pad(cell, ((0, 1), (0, 1)), mode="edge")
        uniform = (e[:-1, :-1] == e[:-1, 1:]) & (e[:-1, :-1] == e[1:, :-1]) & (e[:-1, :-1] == e[1:, 1:])
        full = cell[ry0][:, cx0]
        vv, uu = np.nonzero(~uniform[ry0][:, cx0])
        if not len(vv):
            return full
        flat = y.reshape(c, -1)
        step = max(1, SEMANTIC_BAND_BYTES // (16 * c))
        for k in range(0, len(vv), step):
            v, u = vv[k:k + step], uu[k:k + step]
            r0, r1, c0, c1 = ry0[v] * ow, ry1[v] * ow, cx0[u], cx1[u]
            fx0, fx1 = wx0[u], wx1[u]
            z = (np.take(flat, r0 + c0, 1) * fx0 + np.take(flat, r0 + c1, 1) * fx1) * wy0[v]
            z += (np.take(flat, r1 + c0, 1) * fx0 + np.take(flat, r1 + c1, 1) * fx1) * wy1[v]  # [C, n]
            full[v, u] = (z[0] > self.threshold) if c == 1 else z.argmax(0)
        return full


def make_decoder(head: dict, outputs: list[dict], names: list[str], input_hw: tuple[int, int]):
    """The decoder of the manifest's head family (see :mod:`edgeseg.heads`)."""
    from ..heads import get_head

    return get_head(head["type"]).decoder(head, outputs, names, input_hw)
