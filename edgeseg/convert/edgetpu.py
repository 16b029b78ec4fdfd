"""Edge TPU compatibility of a full-integer TFLite model, predicted from its op list.

No Edge TPU compiler installs on this machine kind (Google's apt repository only), so edgeseg
reads the int8 model's ops with LiteRT and checks each against Coral's published requirements:
int8/uint8 tensors, static shapes, at most 3 dimensions larger than 1 (the innermost), and an op
from the supported-operations table. The compiler maps ops in order until the first one it
cannot run; that op and everything after it fall back to the CPU (it splits the graph once).
When ``edgetpu_compiler`` is on PATH edgeseg runs it and keeps its log instead of predicting.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

# coral.ai/docs/edgetpu/models-intro "Supported operations" (TFLite builtin names)
EDGETPU_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD",
    "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT",
    "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    "HARD_SWISH",
}
ADVICE = {
    "BATCH_MATMUL": "YOLO11's C2PSA attention block; the Edge TPU has no batched matmul. Use YOLOv8-seg, "
                    "whose graph cut before the decode maps fully.",
    "DEQUANTIZE": "a float tail left in the model; keep the outputs int8 (edgeseg dequantizes on the host).",
    "GATHER": "an index lookup; usually from a decode step that belongs on the host.",
}


def _too_many_dims(shape) -> bool:
    dims = [int(d) for d in shape]
    return len(dims) > 3 and any(d > 1 for d in dims[:-3])


def compatibility(model_path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()  # noqa: SLF001 - the only op-list API LiteRT offers
    # activations: what ops produce, plus the model inputs; weights and biases are constants and
    # are exempt from the activation rules (a conv kernel is 4-D by nature)
    live = {i for op in ops for i in op["outputs"]} | {d["index"] for d in it.get_input_details()}
    rows = []
    first_cpu = None
    for k, op in enumerate(ops):
        name = op["op_name"]
        reasons = []
        if name not in EDGETPU_OPS:
            reasons.append("operation not supported by the Edge TPU")
        for ti in list(op["inputs"]) + list(op["outputs"]):
            if ti < 0 or ti not in tensors or ti not in live:
                continue
            t = tensors[ti]
            if t["dtype"] not in (np.int8, np.uint8, np.int32) and name not in ("QUANTIZE",):
                reasons.append(f"tensor {t['name'][:40]} is {np.dtype(t['dtype']).name}, not 8-bit")
                break
            if len(t.get("shape_signature", t["shape"])) and any(int(d) < 0 for d in t.get("shape_signature", [])):
                reasons.append("dynamic shape")
                break
            if _too_many_dims(t["shape"]):
                reasons.append(f"tensor {t['name'][:40]} has more than 3 non-unit dimensions {list(t['shape'])}")
                break
        ok = not reasons
        if not ok and first_cpu is None:
            first_cpu = k
        rows.append({"index": k, "op": name, "edgetpu": ok and first_cpu is None, "supported": ok,
                     "reason": "; ".join(reasons) or ("after the split point: runs on the CPU" if first_cpu is not None and ok else "")})
    n = len(rows)
    mapped = first_cpu if first_cpu is not None else n
    unsupported = sorted({r["op"] for r in rows if not r["supported"]})
    return {"ops": rows, "op_count": n, "mapped_to_edgetpu": mapped, "mapped_fraction": round(mapped / n, 3) if n else 0.0,
            "split_at": None if first_cpu is None else {"index": first_cpu, "op": rows[first_cpu]["op"]},
            "unsupported_ops": unsupported, "advice": [ADVICE[o] for o in unsupported if o in ADVICE],
            "op_types": sorted({r["op"] for r in rows}), "method": "predicted from Coral's published op table"}


def compile_if_available(model_path: Path, out_dir: Path) -> dict:
    """Run edgetpu_compiler when it is installed; otherwise say exactly how to compile elsewhere."""
    exe = shutil.which("edgetpu_compiler")
    if not exe:
        return {"compiled": False,
                "how": "edgetpu_compiler is not installed here; on a Debian/Ubuntu x86-64 machine add Google's Coral "
                       "apt repository, `sudo apt-get install edgetpu-compiler`, and run the same `edgeseg convert "
                       "--target edgetpu` there: it compiles and adds model_edgetpu.tflite to the bundle. The bundle's "
                       f"{model_path.name} is the int8 model the compiler takes."}
    r = subprocess.run([exe, "-s", "-o", str(out_dir), str(model_path)], capture_output=True, text=True, timeout=1800)
    log = r.stdout + r.stderr
    (out_dir / "edgetpu_compiler.log").write_text(log)
    compiled = out_dir / f"{model_path.stem}_edgetpu.tflite"
    ok = r.returncode == 0 and compiled.is_file()
    if ok:
        compiled.rename(out_dir / "model_edgetpu.tflite")
    return {"compiled": ok, "log": "edgetpu_compiler.log", "exit": r.returncode,
            "file": "model_edgetpu.tflite" if ok else None}
