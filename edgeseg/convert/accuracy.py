"""Label-free INT8 accuracy: estimate the mask mAP an INT8 model loses, and bound it (``--max-drop``).

Users often have only unlabeled frames, so the drop is estimated against the FP32 model's own
outputs on held-back images (never the calibration images): its detections at the deployment
threshold (conf 0.25) are the ground truth, the converted model's at conf 0.001 the predictions,
scored by pycocotools' COCOeval (mask mAP, at IoU 0.75:0.99: an INT8 copy overlaps FP32's masks
at ~0.98, which COCO's 0.50:0.95 thresholds barely see). The FP32 model scored the same way against
itself gives the ceiling; the gap between the two is the "agreement drop". It is larger than the
drop on labeled data (the thresholds are stricter, and a mask FP32 got wrong costs nothing there),
so it is scaled by ``DROP_SCALE``, fitted on the reference models (see the README's table).
Semantic heads: mIoU of the converted argmax against FP32's.

Each held-back image is seen three ways (as is, mirrored, zoomed in 20%): the views are not in the
calibration set either, and three times the instances make the estimate steadier.

The search (``--max-drop``) lives here too and calls ``toolchain.convert`` through the caller's
``attempt`` function with different options: the toolchain's calibration choices first, then the
most sensitive nodes kept in float until the estimate is within the bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.decode import FrameResult, make_decoder
from ..runtime.preprocess import InputSpec, preprocess
from ..runtime.sources import read_image

REF_CONF = 0.25  # FP32 detections taken as ground truth: what a deployment keeps
PRED_CONF = 0.001  # the converted model's detections, as Ultralytics' val and `edgeseg eval` score them
# Against FP32's own masks an INT8 copy overlaps at IoU ~0.98, so COCO's 0.50:0.95 thresholds barely
# register it (a model losing 0.0036 on labels scored a perfect 1.0): the agreement is taken at 0.75:0.99.
STRICT_IOU = np.linspace(0.75, 0.99, 25)
# estimated drop = DROP_SCALE x (ceiling - agreement); fitted on the reference models (README table)
DROP_SCALE = 0.14
ZOOM = 0.8


VIEWS = ("as is", "mirrored", "zoomed")


def views(frame: np.ndarray) -> list[np.ndarray]:
    """A held-back image as is, mirrored, and its centre zoomed: three inputs calibration never saw."""
    h, w = frame.shape[:2]
    ch, cw = int(h * ZOOM), int(w * ZOOM)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return [frame, np.ascontiguousarray(frame[:, ::-1]), np.ascontiguousarray(frame[y0:y0 + ch, x0:x0 + cw])]


def _rle(mask: np.ndarray) -> dict:
    import pycocotools.mask as mu

    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def agreement_map(refs: Sequence[FrameResult], tests: Sequence[FrameResult], num_classes: int,
                  iou_thresholds: Sequence[float] | None = None) -> float:
    """COCOeval mask mAP of ``tests`` against ``refs`` taken as ground truth (IoU 0.50:0.95 unless given)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt: dict = {"images": [], "annotations": [], "categories": [{"id": i} for i in range(num_classes)]}
    dets: list[dict] = []
    for k, (r, t) in enumerate(zip(refs, tests)):
        gt["images"].append({"id": k, "width": r.width, "height": r.height})
        for inst in r.instances:
            rle = _rle(inst.full_mask(r.height, r.width))
            x1, y1, x2, y2 = (float(v) for v in inst.box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": k, "category_id": inst.class_id,
                                      "segmentation": rle, "area": float(inst.area), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "iscrowd": 0})
        for inst in t.instances:
            x1, y1, x2, y2 = (float(v) for v in inst.box)
            dets.append({"image_id": k, "category_id": inst.class_id, "score": inst.score,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": _rle(inst.full_mask(t.height, t.width))})
    if not gt["annotations"]:
        return 1.0 if not dets else 0.0  # FP32 sees nothing: agreeing means seeing nothing either
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(dets), "segm")
        if iou_thresholds is not None:
            ev.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[0]), 0.0)


def _miou(ref: np.ndarray, test: np.ndarray, n: int) -> float:
    ious = []
    for k in range(n):
        a, b = ref == k, test == k
        u = (a | b).sum()
        if u:
            ious.append((a & b).sum() / u)
    return float(np.mean(ious)) if ious else 1.0


class DropEstimator:
    """The FP32 model's outputs on held-back images, against which converted models are scored."""

    def __init__(self, fp32_path: Path, head: dict, outputs: list[dict], names: list[str],
                 input_hw: InputSpec | tuple[int, int], images: Sequence[Path]):
        import onnxruntime as ort

        # the input spec (an InputSpec: mean/std, resize) goes to the ONE preprocessing function as the
        # runtime gives it; the decoder needs only its size
        self.spec, self.input_hw = input_hw, tuple(getattr(input_hw, "hw", input_hw))
        self.head, self.outputs, self.names = head, outputs, list(names)
        self.images = list(images)
        sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
        self.input_name = sess.get_inputs()[0].name
        onames = [o.name for o in sess.get_outputs()]
        self.frames = [v for p in self.images for v in views(read_image(p))]
        self.inputs = [preprocess(f, self.spec) for f in self.frames]  # (float NCHW, letterbox)
        self.ref_outs = [dict(zip(onames, sess.run(None, {self.input_name: x}))) for x, _ in self.inputs]
        self.semantic = head["type"] == "semantic"
        dec = make_decoder(head, outputs, names, self.input_hw)
        self.refs = [self._decode(dec, o, lb, REF_CONF) for o, (_, lb) in zip(self.ref_outs, self.inputs)]
        self.ceiling = 1.0
        if not self.semantic:  # FP32 against itself: what a perfect copy scores
            own = [self._decode(dec, o, lb, PRED_CONF) for o, (_, lb) in zip(self.ref_outs, self.inputs)]
            self.ceiling = agreement_map(self.refs, own, len(self.names), STRICT_IOU)

    def _decode(self, dec, outs: dict, lb, conf: float) -> FrameResult:
        return dec(outs, lb) if self.semantic else dec(outs, lb, conf=conf, iou=0.7)

    def view_files(self, folder: Path) -> list[Path]:
        """The views as lossless PNG files, for toolchains that run the converted model only in their
        simulator while building (RKNN, IMX500): simulated there, their outputs are replayed here."""
        import cv2

        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for k, f in enumerate(self.frames):
            path = folder / f"view{k:04d}.png"
            if not cv2.imwrite(str(path), f):
                raise OSError(f"{path}: cannot be written")
            out.append(path)
        return out

    def estimate(self, run: Callable[[np.ndarray], dict], outputs: list[dict] | None = None,
                 layout: str = "nchw", dtype: str = "float32", head: dict | None = None) -> dict[str, Any]:
        """Score a converted model: ``run`` takes its input array (``layout``/``dtype``) and returns
        its outputs by name, described by ``outputs`` (default: the FP32 model's) and ``head`` (the
        bundle's, when the toolchain adds to it, e.g. IMX500's merged scales)."""
        dec = make_decoder(head or self.head, outputs or self.outputs, self.names, self.input_hw)
        tests = []
        for f, (x, lb) in zip(self.frames, self.inputs):
            xt = x if (layout, dtype) == ("nchw", "float32") else preprocess(f, self.spec, layout, dtype)[0]
            tests.append(self._decode(dec, run(xt), lb, PRED_CONF))
        return self.score(tests)

    def score(self, tests: Sequence[FrameResult]) -> dict[str, Any]:
        rep: dict[str, Any] = {"images": len(self.images), "views": len(self.frames)}
        if self.semantic:
            n = len(self.names)
            agree = float(np.mean([(r.label_map == t.label_map).mean() for r, t in zip(self.refs, tests)]))
            miou = float(np.mean([_miou(r.label_map, t.label_map, n) for r, t in zip(self.refs, tests)]))
            rep.update(metric="mIoU against FP32's argmax", pixel_agreement=round(agree, 5),
                       agreement_miou=round(miou, 5), estimated_drop=round(max(1.0 - miou, 0.0) * DROP_SCALE, 4))
        else:
            strict = agreement_map(self.refs, tests, len(self.names), STRICT_IOU)
            rep.update(metric=f"mask mAP at IoU {STRICT_IOU[0]:.2f}:{STRICT_IOU[-1]:.2f} against FP32's detections "
                              f"at conf {REF_CONF} (the converted model's at conf {PRED_CONF})",
                       agreement_map=round(strict, 4), ceiling=round(self.ceiling, 4),
                       agreement_map50_95=round(agreement_map(self.refs, tests, len(self.names)), 4),
                       estimated_drop=round(max(self.ceiling - strict, 0.0) * DROP_SCALE, 4))
        rep["scale"] = DROP_SCALE
        return rep

    def estimate_bundle(self, bundle_dir: Path, toolchain) -> dict[str, Any] | None:
        """Score a converted bundle through its toolchain's host runner; None where it cannot run here."""
        from ..bundle import Bundle
        from ..errors import EdgesegError

        run = toolchain.host_runner(bundle_dir)
        if run is None:
            return None
        m = Bundle.load(bundle_dir, verify=False).manifest
        try:
            return self.estimate(run, m.outputs, m.input.get("layout", "nchw"), m.input.get("dtype", "float32"),
                                 {**self.head, **m.head})
        except EdgesegError:
            # a simulator's recorded outputs (RKNN, IMX500) lack these views: the conversion was not given them
            return None
        finally:
            close = getattr(getattr(run, "__self__", None), "close", None)
            if close is not None:
                close()


def role_error(ref: dict, test: dict, outputs: list[dict], head: dict) -> float:
    """How far ``test``'s outputs are from ``ref``'s: the sum over roles of 1 - cosine (for small
    errors about half the noise-to-signal power, which adds up over independent error sources)."""
    from types import SimpleNamespace

    from ..fidelity import cosine, role_vectors

    m = SimpleNamespace(head=head, outputs=outputs)  # the two fields role_vectors reads
    ra, ta = role_vectors(ref, m), role_vectors(test, m)
    return float(sum(1.0 - cosine(ra[k], ta[k]) for k in ra))


@dataclass
class Attempt:
    """One conversion tried by the search."""

    label: str
    options: dict[str, Any]
    folder: Path
    estimate: dict[str, Any]
    seconds: float
    kept_float: list[str] = field(default_factory=list)
    result: Any = None  # what ``attempt`` returned: (ConvertResult, Manifest)

    @property
    def drop(self) -> float:
        """The drop the search goes by: measured on the labels when the user gave them, else estimated."""
        v = self.estimate.get("labeled_drop", self.estimate.get("estimated_drop"))
        return float("inf") if v is None else float(v)  # not measurable here: never within a bound


# --- ONNX Runtime: sensitivity of each quantized node, by editing the QDQ model ---------------------------------

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
FOLDED_ACTIVATIONS = ("Relu", "Clip")


class QdqGraph:
    """A QDQ model whose chosen nodes can be made to read float inputs again, without recalibrating.

    Every other node keeps the exact scales of the real conversion, so a variant predicts what
    ``nodes_to_exclude`` gives (the final model is still a real conversion, scored again)."""

    def __init__(self, qdq_path: Path, fp32_path: Path):
        import onnx
        from onnx import numpy_helper

        self.model = onnx.load(str(qdq_path))
        g = self.model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.inits = {i.name for i in g.initializer}
        fp32 = onnx.load(str(fp32_path))
        self.float_inits = {i.name: i for i in fp32.graph.initializer}
        # ORT drops a Relu/Clip after a Conv in QDQ (the uint8 range clips instead): a float reader must redo it
        self.fp32_producer = {o: n for n in fp32.graph.node for o in n.output}
        outputs = {o.name for o in g.output}
        # tensor -> index of the DequantizeLinear that hands it, quantized, to a graph output
        index = {id(n): k for k, n in enumerate(g.node)}
        self.output_dq = {}
        for n in g.node:
            if n.op_type == "DequantizeLinear" and n.output[0] in outputs:
                q = self.producer.get(n.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    self.output_dq[q.input[0]] = index[id(n)]
        self._np = numpy_helper
        # nodes that read at least one dequantized tensor: what ORT quantized (and nodes_to_exclude names)
        self.quantized = [n.name for n in g.node if n.op_type not in QDQ_OPS and n.name
                          and any(self._float_source(i) is not None for i in n.input)]
        self.units = self._units()

    def _units(self) -> dict[str, list[str]]:
        """Layers to rank and keep in float: each quantized Conv/MatMul with the SiLU (Sigmoid, Mul) that
        reads its output, as Ultralytics' Conv module; data movement (Concat, Split, Resize...) stays INT8."""
        g = self.model.graph
        q = set(self.quantized)
        # a layer's output reaches its SiLU through a Q/DQ pair: look through them
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)

        def readers(t: str) -> list:
            out = []
            for n in consumers.get(t, []):
                out += readers(n.output[0]) if n.op_type in QDQ_OPS else [n]
            return out

        units = {}
        for n in g.node:
            if n.name in q and n.op_type in WEIGHTED_OPS:
                members = [n.name]
                rs = readers(n.output[0])
                sig = [r for r in rs if r.op_type == "Sigmoid"]
                if sig:
                    mul = [r for r in rs
                           if r.op_type == "Mul" and any(m.name == r.name for m in readers(sig[0].output[0]))]
                    members += [sig[0].name] + [m.name for m in mul[:1]]
                units[n.name] = [m for m in members if m in q]
        return units

    def _float_source(self, name: str) -> str | None:
        """The float tensor a dequantized input stands for: the activation before its QuantizeLinear,
        or the FP32 initializer a quantized weight was made from."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = self.producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
        src = dq.input[0]
        for cand in (src.removesuffix("_quantized"), name.removesuffix("_DequantizeLinear_Output"), name):
            if cand in self.float_inits:
                return "float:" + cand
        return None

    def variant(self, float_nodes: set[str]) -> bytes:
        """The model with ``float_nodes`` reading float inputs, unused Q/DQ pruned, serialized."""
        import onnx

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        g = m.graph
        added: set[str] = set()
        restored: dict[str, str] = {}
        new_nodes = []
        for n in g.node:
            if n.name not in float_nodes:
                continue
            for k, i in enumerate(n.input):
                src = self._float_source(i)
                if src is None:
                    continue
                fp, qp = self.fp32_producer.get(src), self.producer.get(src)
                if fp is not None and qp is not None and fp.op_type in FOLDED_ACTIVATIONS and qp.op_type != fp.op_type:
                    if src not in restored:
                        restored[src] = src + "_float_act"
                        new_nodes.append(onnx.helper.make_node(fp.op_type, [src, *fp.input[1:]], [restored[src]],
                                                               name=fp.name + "_float", **{
                                                                   a.name: onnx.helper.get_attribute_value(a)
                                                                   for a in fp.attribute}))
                        for extra in fp.input[1:]:
                            if extra and extra in self.float_inits and extra not in self.inits:
                                g.initializer.append(self.float_inits[extra])
                    src = restored[src]
                elif src.startswith("float:"):
                    src = src[6:]
                    if src not in added:
                        init = onnx.TensorProto()
                        init.CopyFrom(self.float_inits[src])
                        init.name = src + "_float"
                        g.initializer.append(init)
                        added.add(src)
                    src += "_float"
                n.input[k] = src
            for t in n.output:  # a float node's graph output is handed over unquantized, as ORT does
                k = self.output_dq.get(t)
                if k is not None:
                    dq = g.node[k]
                    dq.op_type = "Identity"
                    del dq.input[:]
                    dq.input.append(t)
        if new_nodes:
            g.node.extend(new_nodes)
            _topo_sort(g)
        _prune(m)
        return m.SerializeToString()


def _topo_sort(g) -> None:
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    nodes, out = list(g.node), []
    while nodes:
        rest = [n for n in nodes if not all(i in ready for i in n.input)]
        done = [n for n in nodes if all(i in ready for i in n.input)]
        if not done:  # a cycle or a missing input: leave the rest as it was, ORT will say what is wrong
            out += rest
            break
        for n in done:
            ready.update(n.output)
        out += done
        nodes = rest
    del g.node[:]
    g.node.extend(out)


def _prune(m) -> None:
    """Drop nodes and initializers nothing reaches the outputs through (the orphaned Q/DQ pairs)."""
    g = m.graph
    need = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(n.input)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in need]
    del g.initializer[:]
    g.initializer.extend(inits)


def qdq_sensitivity(graph: QdqGraph, est: DropEstimator, images: int = 3,
                    progress: Callable[[int, int], None] | None = None) -> list[tuple[str, float]]:
    """Each layer's error at the outputs when it alone is quantized, worst first: quantize one block
    at a time, on held-back images, against FP32 (sum over output roles of 1 - cosine)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # QDQ executed as written (no int8 kernel fusion): 6x faster to open, and the same ranking
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    xs = [x for x, _ in est.inputs[::len(VIEWS)][:images]]  # the un-augmented views
    refs = est.ref_outs[::len(VIEWS)][:images]
    everything = set(graph.quantized)
    out = []
    for k, (name, members) in enumerate(graph.units.items()):
        sess = ort.InferenceSession(graph.variant(everything - set(members)), so, providers=["CPUExecutionProvider"])
        onames = [o.name for o in sess.get_outputs()]
        err = float(np.mean([role_error(r, dict(zip(onames, sess.run(None, {est.input_name: x}))), est.outputs,
                                        est.head)
                             for x, r in zip(xs, refs)]))
        out.append((name, err))
        if progress is not None:
            progress(k + 1, len(graph.units))
    return sorted(out, key=lambda t: -t[1])


def _session_runner(model: bytes | str, fast_open: bool = False) -> Callable[[np.ndarray], dict]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if fast_open:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    iname, onames = sess.get_inputs()[0].name, [o.name for o in sess.get_outputs()]
    return lambda x: dict(zip(onames, sess.run(None, {iname: x})))


# --- the search behind --max-drop ---------------------------------------------------------------------------------

@dataclass
class Plan:
    """What a toolchain offers the search: calibration choices (label, ``--option`` settings; the
    first is the profile's own) and how it keeps layers in float (None: integer only)."""

    calibrations: list[tuple[str, dict[str, Any]]]
    keep_float: Callable[[list[str]], list[str]] | None = None  # ONNX node names -> the toolchain's names
    predicts: bool = False  # the ranking's QDQ edits predict a float set's drop without converting
    budget_x: float | None = 3.0  # the search stops starting steps after this many plain conversions' time
    float_conversions: int = 3  # at most this many conversions with layers kept float


def _ov_names(nodes: list[str]) -> list[str]:
    # OpenVINO's ONNX reader splits a Conv with bias into Convolution "<name>/WithoutBiases" + Add "<name>"
    return [v for n in nodes for v in (n, n + "/WithoutBiases")]


INTEGER_ONLY = Plan([("the profile's calibration", {})])
PLANS: dict[str, Plan] = {
    # ORT's Entropy calibration (calibration_method=entropy) is left out: on both reference models and the
    # test model it gave MinMax's very estimate, at 4x its time (107 s against 24 s for YOLOv8n-seg)
    "onnxruntime": Plan([("MinMax", {}), ("Percentile 99.999", {"calibration_method": "percentile"})],
                        keep_float=list, predicts=True,
                        budget_x=None),  # bounded by the 10 minutes given to the reference model instead
    "openvino": Plan([("NNCF, fast bias correction", {}),
                      ("NNCF, full bias correction", {"fast_bias_correction": False})],
                     keep_float=_ov_names),
    # hybrid quantization: the ONNX node names become [input, output] float16 subgraphs (toolchains/rknn.py);
    # mmse is left out: ~50x the normal algorithm's time
    "rknn": Plan([("normal", {}), ("kl_divergence", {"algorithm": "kl_divergence"})], keep_float=list),
    # integer only: MCT's gradient-based PTQ is its accuracy choice (mixed-precision weights trade bits for
    # memory, never accuracy over 8-bit weights)
    "imx500": Plan([("MCT PTQ", {}), ("MCT GPTQ", {"gptq": True})]),
    # TFLite float fallback (toolchains/tflite): the kept layers run float between int8 neighbours on the CPU;
    # TensorFlow's converter offers no calibration choice. The Edge TPU runs integer only.
    "tflite": Plan([("TFLite converter", {})], keep_float=list),
    "edgetpu": INTEGER_ONLY,
    # both take ONNX Conv node names (NCNN maps them to pnnx's layers by their weights: toolchains/ncnn/mixed.py);
    # NCNN's "auto" already builds its KL and max tables and keeps the one closer to FP32 on held-back images
    # an NCNN float attempt reuses the plain one's tables: 20 s against 197 s for YOLOv8n-seg, so it may take more
    "ncnn": Plan([("KL or max, the closer to FP32", {})], keep_float=list, float_conversions=6),
    "mnn": Plan([("MinMax", {}), ("Percentile 99.999", {"activation_ranges": "percentile"})], keep_float=list),
}
# The search aims 10% under the bound: the estimate is off by ~0.002 on 8 held-back images (README),
# and YOLOv8n-seg on OpenVINO estimated 0.0047 measured 0.0052.
SEARCH_MARGIN = 0.9


class Search:
    """Finds the cheapest INT8 model within ``max_drop`` of FP32 (estimated without labels).

    ``attempt(folder, options)`` converts into ``folder`` (manifest included, so the toolchain's host
    runner can open it) with ``options`` merged into the job's; ``ort_attempt`` does the same with
    ONNX Runtime, whose QDQ model ranks layers for targets that cannot rank their own."""

    def __init__(self, toolchain, est: DropEstimator, max_drop: float, scratch: Path,
                 attempt: Callable[[Path, dict], Any], ort_attempt: Callable[[Path, dict], Any] | None,
                 fp32_path: Path, log: Callable[[str], None] = print, budget_s: float = 600.0,
                 target: str | None = None, measure: Callable[[Path], float] | None = None):
        self.tc, self.est, self.max_drop, self.scratch = toolchain, est, max_drop, scratch
        # with labels (``measure``: the drop of a converted folder on them) the bound is checked where it is
        # defined, and the label-free estimate's margin is not needed
        self.measure = measure
        self.goal = max_drop if measure is not None else max_drop * SEARCH_MARGIN
        self.attempt, self.ort_attempt, self.fp32_path, self.log = attempt, ort_attempt, fp32_path, log
        # by target first: two targets share the tflite toolchain, and only the CPU one runs float layers
        self.plan = PLANS.get(target or toolchain.name) or PLANS.get(toolchain.name, INTEGER_ONLY)
        self.budget_s, self.t0 = budget_s, time.monotonic()
        self.tries: list[Attempt] = []
        self.sensitivity: list[tuple[str, float]] = []
        self._units: dict[str, list[str]] = {}
        self.cache_file: Path | None = None  # where the layer ranking is kept (set by the caller)

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _try(self, label: str, sets: dict, keep: list[str]) -> Attempt:
        folder = self.scratch / f"try{len(self.tries)}"
        t = time.monotonic()
        opts: dict[str, Any] = {"set": dict(sets)}
        if keep:
            opts["keep_float"] = self.plan.keep_float(self.expand(keep)) if self.plan.keep_float else []
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print to stdout
            result = self.attempt(folder, opts)
        est = self.est.estimate_bundle(folder, self.tc) or {"estimated_drop": None}
        if self.measure is not None:
            est["labeled_drop"] = self.measure(folder)
        a = Attempt(label, sets, folder, est, round(time.monotonic() - t, 1), list(keep), result)
        self.tries.append(a)
        self.log(f"  max-drop search [{self._elapsed():.0f}s]: {label}"
                 f"{f', {len(keep)} layers in float' if keep else ''}"
                 f" -> {'measured' if 'labeled_drop' in est else 'estimated'} drop {a.drop:.4f}"
                 f" ({'within' if a.drop <= self.goal else 'over'} {self.goal:.4g})")
        return a

    def run(self) -> Attempt:
        best = None
        for label, sets in self.plan.calibrations:
            if best is not None and self._elapsed() > self.budget_s:
                break
            a = self._try(label, sets, [])
            if best is None and self.plan.budget_x:  # bounded by the target's own plain conversion time
                # (not also by ONNX Runtime's 10 minutes: an NCNN conversion of the reference model alone can
                # take longer on a loaded machine, and the search then stopped before keeping any layer float)
                self.budget_s = self.plan.budget_x * a.seconds
            if best is None or a.drop < best.drop:
                best = a
            if best.drop <= self.goal:
                return best  # a calibration choice costs no speed: nothing cheaper exists
        assert best is not None
        if self.plan.keep_float is None or self._elapsed() > self.budget_s:
            return best
        calibrated = list(self.tries)
        ranked = self._rank(best)
        if not ranked:
            return best
        names = [n for n, _ in ranked]
        base, k = (best, 2)
        if self.plan.predicts:
            base, k = self._predict_k(calibrated, names)
        for i in range(self.plan.float_conversions):
            # past the budget, the first float attempt is still converted once: it is what the ranking was paid
            # for (the ranking alone, ONNX Runtime's, took 4x MNN's plain conversion of YOLOv8n-seg; it is cached)
            if i > 0 and self._elapsed() > self.budget_s:
                break
            a = self._try(base.label, base.options, names[:k])
            if a.drop <= self.goal:
                return a
            if a.drop < best.drop:
                best = a
            if k >= len(names):
                break
            k = min(max(k + 2, 2 * k), len(names))
        return best

    def _rank(self, base: Attempt) -> list[tuple[str, float]]:
        """Layers ranked by sensitivity, from the QDQ model ONNX Runtime makes of the same FP32 model.

        Kept in a cache keyed by the model and the images: a second target (or a second run) of the
        same model reuses it instead of paying for it again."""
        import json

        qdq = base.folder / "model.onnx"
        cache = self.cache_file
        if cache is not None and cache.is_file():
            try:
                data = json.loads(cache.read_text())
                self._units = {k: list(v) for k, v in data["units"].items()}
                self.sensitivity = [(str(n), float(e)) for n, e in data["sensitivity"]]
            except (ValueError, KeyError, TypeError):
                self.sensitivity = []
            if self.sensitivity:
                self.log(f"  max-drop search [{self._elapsed():.0f}s]: layer sensitivity from {cache}")
                if self.tc.name == "onnxruntime":
                    self._graph, self._graph_folder = QdqGraph(qdq, self.fp32_path), base.folder
                return [(n, e) for n, e in self.sensitivity if e > 0]
        if self.tc.name != "onnxruntime":
            if self.ort_attempt is None:
                return []
            folder = self.scratch / "rank-ort"
            self.log(f"  max-drop search [{self._elapsed():.0f}s]: ranking layers on ONNX Runtime's QDQ model")
            self.ort_attempt(folder, {"set": {}})
            qdq = folder / "model.onnx"
        graph = QdqGraph(qdq, self.fp32_path)
        self._graph, self._graph_folder = graph, base.folder
        last = [0.0]

        def progress(k: int, n: int) -> None:
            if time.monotonic() - last[0] > 15 or k == n:
                last[0] = time.monotonic()
                self.log(f"  max-drop search [{self._elapsed():.0f}s]: sensitivity of layer {k}/{n}")

        self._units = graph.units
        self.sensitivity = qdq_sensitivity(graph, self.est, progress=progress)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"units": self._units, "sensitivity": self.sensitivity}))
            os.replace(tmp, cache)  # whole or absent, with two conversions racing
        return [(n, e) for n, e in self.sensitivity if e > 0]

    def expand(self, layers: list[str]) -> list[str]:
        """Ranked layers -> the node names they cover (a Conv with its SiLU)."""
        return [m for n in layers for m in self._units.get(n, [n])]

    def _predict_k(self, calibrated: list[Attempt], names: list[str]) -> tuple[Attempt, int]:
        """The calibration and the fewest top-ranked layers whose float copy (an edit of that QDQ model,
        which is what the real conversion then writes) meets the bound: the calibration whose model
        does best with many layers in float (a clipping calibration can leave a higher floor), then a
        bisection on the number of layers."""
        hi = min(len(names), 64)
        graphs = {id(a): self._graph if a.folder == self._graph_folder else
                  QdqGraph(a.folder / "model.onnx", self.fp32_path) for a in calibrated}
        cache: dict[tuple[int, int], float] = {}

        def drop(a: Attempt, k: int) -> float:
            if (id(a), k) not in cache:
                run = _session_runner(graphs[id(a)].variant(set(self.expand(names[:k]))))
                cache[id(a), k] = float(self.est.estimate(run)["estimated_drop"])
                self.log(f"  max-drop search [{self._elapsed():.0f}s]: predicted for {a.label} with {k} layers "
                         f"in float: {cache[id(a), k]:.4f}")
            return cache[id(a), k]

        base = min(calibrated, key=lambda a: drop(a, hi // 2))
        target = self.goal
        if drop(base, hi) > target:
            target = self.max_drop
        lo = 0
        if drop(base, hi) > target:
            return base, hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if drop(base, mid) <= target:
                hi = mid
            else:
                lo = mid
        return base, max(hi, 1)


class Accuracy:
    """The accuracy side of one conversion: the label-free estimate, the --max-drop search, the
    real drop when a labeled dataset is given, and what goes into edgeseg.json and the log."""

    def __init__(self, fp32_path: Path, head: dict, outputs: list[dict], imported, cset, work: Path, toolchain,
                 log: Callable[[str], None] = print, model_input: InputSpec | None = None, target: str | None = None):
        self.model_input, self.target = model_input, target
        self.fp32_path, self.head, self.outputs, self.imported, self.cset = fp32_path, head, outputs, imported, cset
        self.work, self.tc, self.log = work, toolchain, log
        self._est: DropEstimator | None = None
        self.search: Search | None = None
        self.chosen: Attempt | None = None
        self.max_drop: float | None = None
        self.section: dict[str, Any] = {}
        self._fp32_score: dict[str, float] = {}
        self.search_seconds = 0.0
        self._measured: dict[str, dict[str, Any]] = {}  # folder -> its drop on the labels, as the search measured

    @property
    def est(self) -> DropEstimator:
        if self._est is None:
            self._est = DropEstimator(self.fp32_path, self.head, self.outputs, self.imported.names,
                                      self.model_input or self.imported.input_hw, self.cset.holdout)
        return self._est

    @property
    def simulated(self) -> bool:
        """Whether the converted model runs here only in its vendor's simulator, at build time (RKNN, IMX500)."""
        from .toolchains import Toolchain

        return type(self.tc).host_runner is not Toolchain.host_runner

    def simulated_views(self, folder: Path) -> list[Path]:
        """Image files a simulate-while-building toolchain must run for the estimate; none for the others,
        whose bundles run here."""
        return self.est.view_files(folder) if self.simulated else []

    def bounded(self, attempt: Callable[..., Any], folder: Path, max_drop: float, budget_s: float = 600.0,
                data: str | Path | None = None) -> Any:
        """Run the search, move the chosen model into ``folder``; returns what ``attempt`` returned for it.
        With ``data`` (labels) each attempt is measured on them and the search goes by that."""
        from ..profiles import load_profile
        from .toolchains import load_toolchain

        self.max_drop = max_drop
        ort_tc = load_toolchain("onnxruntime")

        def ort_attempt(f: Path, extra: dict) -> Any:
            return attempt(f, extra, prof=load_profile("onnxruntime"), tc=ort_tc, prec="int8")

        metric = "mIoU" if self.head["type"] == "semantic" else "mask mAP50-95"
        how = (f"measured on the labels of {data}" if data is not None
               else f"label-free estimate on {len(self.cset.holdout)} held-back images")
        self.log(f"searching for the cheapest INT8 model within {max_drop} {metric} of FP32 ({how})")
        measure = None
        if data is not None:
            def measure(f: Path) -> float:
                self._measured[str(f)] = self._measure(f, attempt, data)
                return float(self._measured[str(f)]["drop"])
        self.search = Search(self.tc, self.est, max_drop, self.work / "search", attempt,
                             ort_attempt if self.tc.name != "onnxruntime" else None, self.fp32_path, self.log, budget_s,
                             self.target, measure)
        h = hashlib.sha256(self.fp32_path.read_bytes())
        for p in [*self.cset.images, "|", *self.cset.holdout]:
            h.update(str(p).encode())
        from ..runtime.replay import cache_root

        self.search.cache_file = cache_root() / "sensitivity" / f"{h.hexdigest()[:24]}.json"
        self.chosen = self.search.run()
        self.search_seconds = round(self.search._elapsed(), 1)  # not counting fidelity, --data and latency after it
        for p in self.chosen.folder.iterdir():
            shutil.move(str(p), str(folder / p.name))
        return self.chosen.result

    def report(self, bundle_dir: Path, attempt: Callable[..., Any], data: str | Path | None = None) -> dict[str, Any]:
        """``accuracy`` (and ``max_drop``) sections for the manifest's ``quantization``."""
        if self.chosen is not None:
            est = dict(self.chosen.estimate)
        else:
            try:
                est = self.est.estimate_bundle(bundle_dir, self.tc)
            except Exception as e:  # noqa: BLE001 - the estimate informs; it never costs the user the bundle
                est = {"estimated_drop": None, "note": f"not measured: {type(e).__name__}: {e}"}
            est = est or {"estimated_drop": None, "note": "not measured: the model runs here only in its "
                                                          "simulator, on the held-back images themselves"}
        est.pop("labeled_drop", None)
        sec: dict[str, Any] = {"estimate": est}
        if data is not None:  # the search measured the chosen model already when it went by the labels
            sec["measured"] = (self._measured.get(str(self.chosen.folder)) if self.chosen is not None else None) \
                or self._measure(bundle_dir, attempt, data)
        out: dict[str, Any] = {"accuracy": sec}
        if self.search is not None and self.chosen is not None:
            s, c = self.search, self.chosen
            sens = dict(s.sensitivity)
            met = c.drop <= float(self.max_drop or 0)
            out["max_drop"] = {
                "bound": self.max_drop, "met": met, "estimated_drop": c.estimate.get("estimated_drop"),
                "decided_by": "the labels given (--data)" if s.measure is not None else "the label-free estimate",
                **({"measured_drop": c.estimate["labeled_drop"]} if "labeled_drop" in c.estimate else {}),
                "chosen": c.label,
                "calibration": c.options, "layers_kept_float": [{"layer": n, "nodes": s._units.get(n, [n]),
                                                                  "sensitivity": round(sens.get(n, 0.0), 6)}
                                                                 for n in c.kept_float],
                "sensitivity_measure": "sum over output roles of 1 - cosine against FP32, the layer alone quantized "
                                       "(ONNX Runtime QDQ), mean over held-back images",
                "sensitivity_top": [{"layer": n, "sensitivity": round(e, 6)} for n, e in s.sensitivity[:15]],
                "attempts": [{"label": a.label, "layers_kept_float": len(a.kept_float),
                              "estimated_drop": a.estimate.get("estimated_drop"),
                              **({"measured_drop": a.estimate["labeled_drop"]} if "labeled_drop" in a.estimate else {}),
                              "seconds": a.seconds} for a in s.tries],
                "search_seconds": self.search_seconds,
            }
            if not met and c.estimate.get("estimated_drop") is None:
                out["max_drop"]["note"] = "the drop cannot be estimated on this host for this target yet"
            elif not met:
                out["max_drop"]["note"] = (f"best {'measured' if s.measure is not None else 'estimated'} drop "
                                           f"{round(c.drop, 4)} is over the bound "
                                           f"{self.max_drop}: "
                                           + ("the target runs integer only, and its calibration choices were all tried"
                                              if s.plan.keep_float is None
                                              else "the search's time or conversion limit was reached"))
            if c.kept_float and c.folder != s.tries[0].folder:
                if self.simulated:
                    out["max_drop"]["latency"] = {"note": "not measured: the target runs only on its device (this "
                                                          "host replays its simulator's outputs)"}
                else:
                    try:
                        out["max_drop"]["latency"] = self._latency(s.tries[0].folder, bundle_dir)
                    except Exception as e:  # noqa: BLE001 - the bundle is written whatever the benchmark does
                        out["max_drop"]["latency"] = {"note": f"not measured: {type(e).__name__}: {e}"}
        self.section = out
        return out

    def _measure(self, bundle_dir: Path, attempt: Callable[..., Any], data: str | Path) -> dict[str, Any]:
        """The real drop: `edgeseg eval` of this bundle and of the FP32 model (ONNX Runtime) on ``data``."""
        from .. import load
        from ..eval import evaluate
        from ..profiles import load_profile
        from .toolchains import load_toolchain

        ref = self.work / "fp32-reference"
        scores = dict(self._fp32_score)  # the FP32 model is converted and scored once per conversion
        if not scores:
            attempt(ref, {}, prof=load_profile("onnxruntime"), tc=load_toolchain("onnxruntime"), prec="fp32")
        for tag, folder in (("fp32", ref), ("converted", bundle_dir)):
            if tag in scores:
                continue
            with load(folder, conf=PRED_CONF, iou=0.7) as m:
                r = evaluate(m, data, progress=False)
            scores[tag] = r.get("miou", r.get("mask_map50_95"))
        self._fp32_score = {"fp32": scores["fp32"]}
        metric = "miou" if self.head["type"] == "semantic" else "mask_map50_95"
        return {"data": str(data), "metric": metric, "fp32": scores["fp32"], "converted": scores["converted"],
                "drop": round(scores["fp32"] - scores["converted"], 4), "fp32_reference": "FP32 ONNX on ONNX Runtime"}

    def _latency(self, plain: Path, chosen: Path, rounds: int = 2) -> dict[str, Any]:
        """Inference ms of the plain INT8 and the chosen model, `edgeseg bench`, alternating runs."""
        from .. import load
        from ..runtime.bench import bench

        ms: dict[str, list[float]] = {"plain": [], "chosen": []}
        src = str(self.cset.holdout[0])
        for _ in range(rounds):
            for tag, folder in (("plain", plain), ("chosen", chosen)):
                with load(folder) as m:
                    ms[tag].append(bench(m, src, frames=30, warmup=5, pipeline_frames=10)["inference_ms"]["median"])
        p, c = float(np.median(ms["plain"])), float(np.median(ms["chosen"]))
        return {"inference_ms_plain_int8": round(p, 2), "inference_ms": round(c, 2), "cost_ms": round(c - p, 2),
                "measured_by": "edgeseg bench on this machine (median of alternating runs)"}

    def lines(self) -> list[str]:
        """What the convert command prints."""
        sec = self.section.get("accuracy") or {}
        e = sec.get("estimate") or {}
        out = []
        if e.get("estimated_drop") is not None:
            what = "mIoU" if self.head["type"] == "semantic" else "mask mAP50-95"
            line = (f"label-free estimate: about {e['estimated_drop']:.4f} {what} lost against FP32 "
                    f"({e['views']} views of {e['images']} held-back images)")
            if "measured" in sec:
                m = sec["measured"]
                line += f"; measured on {Path(m['data']).name}: {m['drop']:.4f} ({m['fp32']} -> {m['converted']})"
            out.append(line)
        md = self.section.get("max_drop")
        if md:
            kept = md["layers_kept_float"]
            out.append(f"--max-drop {md['bound']}: {'met' if md['met'] else 'NOT met'} with {md['chosen']}"
                       f"{f', {len(kept)} layers kept in float' if kept else ''}"
                       + (f" (measured drop {md['measured_drop']}, estimated {md['estimated_drop']},"
                          if "measured_drop" in md else f" (estimated drop {md['estimated_drop']},")
                       + f" search {md['search_seconds']:.0f} s)"
                       + (f"; latency {md['latency']['inference_ms_plain_int8']} -> {md['latency']['inference_ms']} ms"
                          if "inference_ms" in md.get("latency", {}) else ""))
            if not md["met"]:
                out.append(f"warning: {md['note']}; the bundle is written and marked max_drop.met=false")
        return out


def keep_inputs_float(qdq_path: Path, fp32_path: Path, nodes: Sequence[str]) -> list[str]:
    """Make ``nodes`` of an ONNX Runtime QDQ model read float inputs; returns the names found.

    ``nodes_to_exclude`` alone leaves a node float but still fed dequantized INT8 wherever the
    tensor's producer is quantized (ORT rewires every consumer to the DequantizeLinear): the error
    a user keeps a layer in float to avoid stays. Here its inputs are the float tensors again."""
    import onnx

    graph = QdqGraph(qdq_path, fp32_path)
    found = [n for n in nodes if n in set(graph.quantized)]
    if found:
        m = onnx.ModelProto()
        m.ParseFromString(graph.variant(set(found)))
        onnx.save(m, str(qdq_path))
    return found


def report_lines(section: dict[str, Any]) -> list[str]:
    """Markdown for `edgeseg eval --report`: the conversion's estimate, measured drop and search."""
    e = (section.get("accuracy") or {}).get("estimate") or {}
    m = (section.get("accuracy") or {}).get("measured")
    lines = ["", "## INT8 drop at conversion (label-free estimate)", "",
             (f"Estimated drop: {e.get('estimated_drop')} ({e.get('metric')}, {e.get('views')} views of "
              f"{e.get('images')} held-back images)")]
    if m:
        lines.append(f"Measured on {m['data']}: {m['drop']} ({m['metric']} {m['fp32']} FP32 -> {m['converted']})")
    md = section.get("max_drop")
    if md:
        lines += ["", (f"--max-drop {md['bound']}: {'met' if md['met'] else 'not met'} with {md['chosen']}, "
                       f"search {md['search_seconds']} s" + (f" ({md['note']})" if md.get("note") else ""))]
        if "inference_ms" in md.get("latency", {}):
            la = md["latency"]
            lines.append(f"Latency: {la['inference_ms_plain_int8']} ms plain INT8 -> {la['inference_ms']} ms")
        lines += ["", "| attempt | layers in float | estimated drop | seconds |", "| --- | --- | --- | --- |"]
        lines += [f"| {a['label']} | {a['layers_kept_float']} | {a['estimated_drop']} | {a['seconds']} |"
                  for a in md["attempts"]]
        if md["layers_kept_float"]:
            lines += ["", f"Kept in float, by sensitivity ({md['sensitivity_measure']}):", "",
                      "| layer | sensitivity |", "| --- | --- |"]
            lines += [f"| {k['layer']} | {k['sensitivity']} |" for k in md["layers_kept_float"]]
    return lines
