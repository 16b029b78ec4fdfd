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
    elif spec["precision"] == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    Path(spec["out"]).write_bytes(conv.convert())
    result["versions"] = {"tensorflow": tf.__version__, "onnx2tf": _ver("onnx2tf")}


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
