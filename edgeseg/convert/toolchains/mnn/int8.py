"""Full INT8 for MNN from edgeseg's own calibration, written in MNN's compression-parameter format.

MNN's converter takes ``--compressionParamsFile``: per convolution, the scale and zero point of its
input and output activations and per-channel weight scales (MNN's ``MNN_compression.proto``, read as
JSON). It quantizes exactly those convolutions to int8 and leaves every other op in float; the
runtime converts at the boundaries. MNN's own calibration tool (``mnnquant``) gives symmetric
scales and cannot keep layers in float with its EMA method, which cost 0.030 mask mAP on the
reference model; asymmetric MinMax ranges measured here on the split FP32 ONNX keep INT8 within
0.004 of FP32 (README).

The convolutions that produce the model's outputs stay float: their values go straight to
decoding (DFL softmax, class sigmoid, mask coefficients), where one int8 scale per tensor costs
accuracy and saves almost nothing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROTO_VERSION = "0.0.0"


# activations MNN's converter folds into the convolution before it (its fuse passes; a Clip only
# as ReLU6)
FUSED_ACTIVATIONS = ("Relu", "Clip")


def _fuses(node, consts: dict) -> bool:
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    lo, hi = (consts.get(t) if t else None for t in (list(node.input[1:3]) + ["", ""])[:2])
    return lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0


@dataclass
class ConvLayer:
    name: str
    input: str
    output: str
    weight_name: str
    weight: np.ndarray


def conv_layers(model, keep_float: Iterable[str] = ()) -> list[ConvLayer]:
    """Convolutions to quantize: all with a constant weight, except output producers and ``keep_float``
    (node or output tensor names)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consts = {k: numpy_helper.to_array(v) for k, v in inits.items() if np.prod(v.dims) == 1}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    skip = set(keep_float)
    layers = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if n.output[0] in outputs or n.output[0] in skip or n.name in skip:
            continue
        out = n.output[0]
        # MNN's converter fuses a ReLU/ReLU6 into the convolution before it applies compression
        # parameters, so the convolution's own output tensor is gone; parameters keyed on it are
        # silently dropped and the layer stays float. Key them on the fused output instead.
        nxt = consumers.get(out, [])
        if len(nxt) == 1 and _fuses(nxt[0], consts):
            out = nxt[0].output[0]
            if out in outputs:
                continue
        layers.append(ConvLayer(n.name, n.input[0], out, n.input[1], numpy_helper.to_array(inits[n.input[1]])))
    return layers


def tensor_ranges(onnx_path: Path, input_name: str, inputs: Iterable[np.ndarray],
                  method: str = "minmax") -> dict[str, tuple[float, float]]:
    """Range of every convolution input and output over the calibration inputs: ONNX Runtime's
    calibrator on the FP32 model, the statistics its own static quantization uses. ``minmax``: min
    and max; ``percentile``: the 0.0005% and 99.9995% points of each tensor's histogram (asymmetric,
    as ORT's percentile calibration: a few outlier values no longer stretch the int8 step)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    from ...calibration import ArrayReader

    with tempfile.TemporaryDirectory() as d:
        extra = {"symmetric": False, "percentile": 99.999} if method == "percentile" else {}
        cal = create_calibrator(onnx_path, ["Conv", *FUSED_ACTIVATIONS],
                                augmented_model_path=str(Path(d) / "augmented.onnx"),
                                calibrate_method=getattr(CalibrationMethod, "Percentile" if method == "percentile"
                                                         else "MinMax"), extra_options=extra)
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print to stdout
            cal.collect_data(ArrayReader(input_name, inputs))
            data = cal.compute_data().data
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.items()}


# ops whose output holds the same values as (part of) their data input: an int8 scale passes through
# them unchanged, so MNN carries one quantization onto every tensor they connect
SCALE_PRESERVING = {"Concat", "Resize", "Upsample", "MaxPool", "Split", "Slice", "Reshape", "Transpose",
                    "Identity", "Flatten", "Squeeze", "Unsqueeze", "Pad"}


def shared_ranges(model, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``ranges`` with one range per group of tensors joined by scale-preserving ops.

    MNN keeps a tensor's int8 parameters on the tensor. When two quantized convolutions reach the
    same float tensor through such ops with different ranges (YOLOv8's head: the P4 C2f output is
    concatenated into both the P3 and the P4 path), the tensor gets two sets of parameters and
    which one a load uses follows memory addresses: measured on the reference YOLOv8n-seg, the class
    cosine of one model file moved between 0.60 and 0.997 from load to load. One range per group
    (the union of its members' ranges) leaves nothing to choose.
    """
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for n in model.graph.node:
        if n.op_type not in SCALE_PRESERVING:
            continue
        data = [i for i in (n.input if n.op_type == "Concat" else n.input[:1]) if i]
        for t in data[1:] + [o for o in n.output if o]:
            parent[find(t)] = find(data[0])
    union: dict[str, tuple[float, float]] = {}
    for t, (lo, hi) in ranges.items():
        r = find(t)
        a, b = union.get(r, (lo, hi))
        union[r] = (min(a, lo), max(b, hi))
    return {t: union[find(t)] for t in ranges}


def _activation(name: str, lo: float, hi: float) -> dict:
    # asymmetric int8 over [min, max] (always containing 0): SiLU outputs start near -0.28, so a
    # symmetric range would waste most of the negative half
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero = int(np.clip(round(-128 - lo / scale), -128, 127))
    return {"name": name, "bits": 8, "scales": [scale], "zeroPoint": zero, "clampMin": -128, "clampMax": 127}


def compression_params(layers: list[ConvLayer], ranges: dict[str, tuple[float, float]]) -> dict:
    """MNN ``Compression.Pipeline`` (JSON mapping) quantizing ``layers`` with these activation ranges."""
    out = []
    for l in layers:
        w = l.weight.reshape(l.weight.shape[0], -1)
        wscale = np.maximum(np.abs(w).max(axis=1) / 127.0, 1e-8)  # symmetric per output channel
        out.append({
            "input": [_activation(l.input, *ranges[l.input])],
            "weight": [{"name": l.weight_name, "bits": 8, "scales": wscale.astype(float).tolist(),
                        "clampMin": -127, "clampMax": 127}],
            "output": [_activation(l.output, *ranges[l.output])],
            "method": "QAT",  # enum 0: MNN's default int8 kernels (the others are overflow/Winograd-aware)
        })
    return {"version": PROTO_VERSION,
            "algo": [{"type": "QUANTIZE", "quantParams": {"roundMode": "ROUND_HALF_TO_EVEN", "layer": out}}]}


def int8_convolutions(model_json: Path) -> tuple[int, int]:
    """(int8, all) convolutions in an MNN model dumped to JSON by MNN's converter (``-f MNN
    --JsonFile``): what MNN actually wrote, whatever it was asked to do."""
    import json

    ops = json.loads(Path(model_json).read_text())["oplists"]
    convs = [o for o in ops if o.get("type", "").startswith(("Convolution", "Deconvolution"))]
    return sum(1 for o in convs if "symmetricQuan" in (o.get("main") or {})), len(convs)
