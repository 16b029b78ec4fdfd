"""Runs inside the isolated TensorFlow environment: ONNX -> SavedModel (onnx2tf) -> TFLite.

    <tflite-env>/bin/python edgeseg/convert/workers/tflite_worker.py SPEC.json

Full-integer INT8 uses TFLiteConverter with TFLITE_BUILTINS_INT8 only (no Flex/SELECT_TF_OPS can
slip in) and a representative dataset of edgeseg-preprocessed calibration inputs (.npy, NHWC
float 0..1). Does not import edgeseg.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def job(spec: dict, result: dict) -> None:
    import numpy as np

    work = Path(spec["work"])
    # onnx2tf downloads this sample from GitHub unless it is already in the working folder
    np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.zeros((20, 128, 128, 3), np.float32))
    onnx2tf = Path(sys.executable).with_name("onnx2tf")
    saved = work / "saved_model"
    r = subprocess.run([str(onnx2tf), "-i", spec["onnx"], "-o", str(saved), "-osd", "-nuo", "-dgc"], cwd=work)
    if r.returncode != 0 or not (saved / "saved_model.pb").is_file():
        raise RuntimeError(f"onnx2tf failed (exit {r.returncode})")
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if spec["precision"] == "int8":
        files = [l for l in Path(spec["dataset"]).read_text().splitlines() if l]

        def rep():
            for f in files:
                yield [np.load(f).astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8 if spec.get("io", "int8") == "int8" else tf.uint8
        conv.inference_output_type = conv.inference_input_type
        if spec.get("keep_float"):
            Path(spec["out"]).write_bytes(_float_fallback(tf, conv, spec["keep_float"], result))
            result["versions"] = {"tensorflow": tf.__version__, "onnx2tf": _ver("onnx2tf")}
            return
    elif spec["precision"] == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    Path(spec["out"]).write_bytes(conv.convert())
    result["versions"] = {"tensorflow": tf.__version__, "onnx2tf": _ver("onnx2tf")}


WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL")
# single-input steps between two layers (PAD: onnx2tf's explicit padding before a 3x3 convolution)
ACTIVATIONS = ("LOGISTIC", "MUL", "RELU", "RELU6", "LEAKY_RELU", "HARD_SWISH", "PAD")


def _float_fallback(tf, conv, keep: list[dict], result: dict) -> bytes:
    """Full-integer model but for the listed layers, which read and write float (TFLite float fallback).

    onnx2tf renames every layer, so each ONNX layer is found by its weights (count, sum, sum of
    magnitudes: transposing them changes none) among the calibrated model's weighted ops; the
    quantizer then leaves that op, and the SiLU (LOGISTIC, MUL) reading it, in float. So that it also
    reads float (an int8 input carries the very error the ranking measured), the layer feeding it and
    that layer's activation stay float too."""
    import numpy as np
    from tensorflow.lite.python import convert as tfl_convert

    conv.experimental_mlir_quantizer = True
    conv._experimental_calibrate_only = True  # float model with the calibration ranges recorded
    calibrated = conv.convert()
    it = tf.lite.Interpreter(model_content=calibrated)
    it.allocate_tensors()
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    readers: dict[int, list[dict]] = {}
    producer: dict[int, dict] = {}
    for op in ops:
        for i in op["inputs"]:
            readers.setdefault(int(i), []).append(op)
        for o in op["outputs"]:
            producer[int(o)] = op

    def feeding(op: dict) -> list[str]:
        """The layer (and its activation) producing ``op``'s data input: what makes that input float."""
        t = next((int(i) for i in op["inputs"] if int(i) in producer), None)
        chain: list[str] = []
        for _ in range(4):
            p = producer.get(t) if t is not None else None
            if p is None:
                return []
            chain.append(names[int(p["outputs"][0])])
            if p["op_name"] in WEIGHTED:
                return chain
            if p["op_name"] not in ACTIVATIONS:
                return []  # a Concat, Add...: several tensors meet; the input stays as the quantizer made it
            ins = [int(i) for i in p["inputs"] if int(i) in producer]
            ins = [i for i in ins if producer[i]["op_name"] != "LOGISTIC"] or ins  # a SiLU's Mul: its x
            t = ins[0] if ins else None
        return []
    sigs = []
    for op in ops:
        if op["op_name"] not in WEIGHTED:
            continue
        for i in op["inputs"]:
            try:
                w = it.get_tensor(int(i))
            except ValueError:
                continue
            if w.dtype == np.float32 and w.size > 1:
                sigs.append((op, w.size, float(w.sum(dtype=np.float64)), float(np.abs(w).sum(dtype=np.float64))))
    deny, found = [], []
    for k in keep:
        for op, size, s, a in sigs:
            if size == k["size"] and abs(s - k["sum"]) <= 1e-4 * (abs(k["abs"]) + 1e-6) \
                    and abs(a - k["abs"]) <= 1e-4 * (k["abs"] + 1e-6):
                out = int(op["outputs"][0])
                deny.append(names[out])
                rs = readers.get(out, [])
                sig = [r for r in rs if r["op_name"] == "LOGISTIC"]
                mul = [r for r in rs if r["op_name"] == "MUL"
                       and (not sig or int(sig[0]["outputs"][0]) in [int(v) for v in r["inputs"]])]
                deny += [names[int(r["outputs"][0])] for r in sig[:1] + mul[:1]]
                deny += [n for n in feeding(op) if n not in deny]
                found.append(k["node"])
                break
    result["kept_float"] = found
    result["denylisted"] = deny
    # float in and out: on a CPU a DEQUANTIZE costs little, and 8-bit outputs would keep an error that no
    # layer kept in float removes (on the test model: the same estimate with one, two or every layer float)
    return tfl_convert.mlir_quantize(calibrated, denylisted_nodes=deny)


def _ver(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    from _protocol import run  # the sibling module: workers never import edgeseg

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run(job)
