"""Edge TPU compatibility of a full-integer TFLite model, predicted from its op list.

No Edge TPU compiler installs on this machine kind (Google's apt repository only), so edgeseg
reads the int8 model (its flatbuffer, through the schema LiteRT ships) and checks each op against
Coral's published requirements: int8/uint8 tensors, static shapes, at most 3 dimensions larger
than 1 (the innermost), an op from the supported-operations table, and that table's per-op
limits (a softmax over one axis only, unit strides, nothing across the batch dimension...). The
compiler maps ops in order until the first one it cannot run; that op and everything after it
fall back to the CPU (it splits the graph once). When ``edgetpu_compiler`` is on PATH edgeseg
also runs it, keeps its log and puts its figures beside the prediction, naming where they differ.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ....errors import EdgesegError

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
    "SOFTMAX": "a softmax over more than one axis, which the Edge TPU's softmax (one axis, at most 16,000 "
               "elements) does not take: in YOLO11's C2PSA attention (positions x positions per head), so "
               "rewriting its matmuls as multiply-and-sum would still leave the block on the CPU (use "
               "YOLOv8-seg); in the DFL box decode of an unsplit model, which split outputs (the default) leave "
               "to the host.",
    "DEQUANTIZE": "a float tail left in the model; keep the outputs int8 (edgeseg dequantizes on the host).",
    "GATHER": "an index lookup; usually from a decode step that belongs on the host.",
}
SOFTMAX_MAX = 16000


def _non_unit(shape) -> int:
    return sum(int(d) > 1 for d in shape)


def _axes(values, rank: int) -> list[int]:
    return sorted({int(a) % rank for a in np.ravel(values)}) if values is not None and rank else []


# Coral's table, column "Known limitations", for the ops YOLO-seg graphs produce. Each takes the op
# (name, options, input shapes, constant inputs or None, output shapes) and returns why the Edge TPU
# would not run it, or None.
def _no_fused_activation(op) -> str | None:
    if getattr(op.options, "fusedActivationFunction", 0):
        return "a fused activation function (not allowed on this op)"
    return None


def _concatenation(op) -> str | None:
    if (why := _no_fused_activation(op)):
        return why
    consts = [c for c in op.consts if c is not None]
    if consts and (len(op.inputs) != 2 or any(np.any(c != 0) for c in consts)):
        return "a constant input that is not a zero pad beside a single other input"
    return None


def _same_dilation(op) -> str | None:
    o = op.options
    if getattr(o, "dilationHFactor", 1) != getattr(o, "dilationWFactor", 1):
        return "different dilations in x and y"
    return None


def _softmax(op) -> str | None:
    shape = op.inputs[0]
    n = int(np.prod(shape)) if len(shape) else 1
    if _non_unit(shape) > 1 or n > SOFTMAX_MAX:
        return (f"softmax over {list(map(int, shape))}: "
                f"the Edge TPU takes a 1-D input of at most {SOFTMAX_MAX:,} elements")
    return None


def _strided_slice(op) -> str | None:
    strides = op.consts[3] if len(op.consts) > 3 else None
    o = op.options
    if strides is None or np.any(np.asarray(strides) != 1):
        return "strides other than 1"
    if getattr(o, "ellipsisMask", 0) or getattr(o, "newAxisMask", 0):
        return "an ellipsis or new-axis mask"
    return None


def _not_batch(axis_input: int) -> Callable:
    def check(op) -> str | None:
        rank = len(op.inputs[0])
        if rank > 1 and 0 in _axes(op.consts[axis_input] if len(op.consts) > axis_input else None, rank):
            return "operates on the batch dimension"
        return None
    return check


def _mean(op) -> str | None:
    if (why := _not_batch(1)(op)):
        return why
    shape = op.inputs[0]
    if len(shape) and len(shape) - 1 in _axes(op.consts[1], len(shape)) and int(shape[-1]) % 4:
        return f"a reduction over the channel axis of {int(shape[-1])}, not a multiple of 4"
    return None


def _pack(op) -> str | None:
    return "packs along the batch dimension" if getattr(op.options, "axis", 0) == 0 and len(op.inputs[0]) else None


def _pad(op) -> str | None:
    pads = op.consts[1] if len(op.consts) > 1 else None
    if pads is None or np.any(np.asarray(pads)[0] != 0):
        return "pads the batch dimension" if pads is not None else "padding that is not a constant"
    return None


def _squeeze(op) -> str | None:
    shape = [int(d) for d in op.inputs[0]]
    dims = [d % len(shape) for d in (getattr(op.options, "squeezeDims", None) or [])] or \
        [i for i, d in enumerate(shape) if d == 1]
    if any(any(s > 1 for s in shape[:d]) for d in dims):
        return f"a squeeze of {shape} that needs a relayout (only leading 1s may go)"
    return None


def _fully_connected(op) -> str | None:
    return "an output with more than one dimension" if op.outputs and _non_unit(op.outputs[0]) > 1 else None


LIMITS: dict[str, Callable] = {
    "AVERAGE_POOL_2D": _no_fused_activation, "MAX_POOL_2D": _no_fused_activation,
    "CONCATENATION": _concatenation, "CONV_2D": _same_dilation, "DEPTHWISE_CONV_2D": _same_dilation,
    "FULLY_CONNECTED": _fully_connected, "MEAN": _mean, "PACK": _pack, "PAD": _pad,
    "REDUCE_MAX": _not_batch(1), "REDUCE_MIN": _not_batch(1), "SUM": _not_batch(1),
    "SOFTMAX": _softmax, "SQUEEZE": _squeeze, "STRIDED_SLICE": _strided_slice,
}


def _too_many_dims(shape) -> bool:
    dims = [int(d) for d in shape]
    return len(dims) > 3 and any(d > 1 for d in dims[:-3])


_INT_TYPES = {"INT8", "UINT8", "INT32"}


def _read(model_path: Path):
    # the flatbuffer, not the interpreter: op options (strides, fused activations, axes) and
    # constant inputs are only there
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(Path(model_path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    np_types = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FLOAT32": np.float32}
    return m, names, types, np_types


def compatibility(model_path: Path) -> dict:
    m, names, types, np_types = _read(model_path)
    g = m.subgraphs[0]

    def const(ti: int):
        if ti < 0:
            return None
        t = g.tensors[ti]
        data = m.buffers[t.buffer].data if t.buffer < len(m.buffers) else None
        if data is None or not len(data) or types[t.type] not in np_types:
            return None
        return np.frombuffer(bytes(np.asarray(data, np.uint8)), np_types[types[t.type]]).reshape(t.shape)

    # activations: what ops produce, plus the model inputs; weights and biases are constants and
    # are exempt from the activation rules (a conv kernel is 4-D by nature)
    live = {int(i) for op in g.operators for i in op.outputs} | {int(i) for i in g.inputs}
    rows = []
    first_cpu = None
    for k, op in enumerate(g.operators):
        code = m.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        reasons = []
        if name not in EDGETPU_OPS:
            reasons.append("operation not supported by the Edge TPU")
        for ti in [int(i) for i in op.inputs] + [int(i) for i in op.outputs]:
            if ti < 0 or ti not in live:
                continue
            t = g.tensors[ti]
            name_t = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            if types[t.type] not in _INT_TYPES and name != "QUANTIZE":
                reasons.append(f"tensor {name_t[:40]} is {types[t.type].lower()}, not 8-bit")
                break
            if t.shapeSignature is not None and any(int(d) < 0 for d in t.shapeSignature):
                reasons.append("dynamic shape")
                break
            if _too_many_dims(t.shape):
                reasons.append(f"tensor {name_t[:40]} has more than 3 non-unit dimensions {list(map(int, t.shape))}")
                break
        if not reasons and name in LIMITS:
            view = SimpleNamespace(options=op.builtinOptions,
                                   inputs=[g.tensors[int(i)].shape if i >= 0 else [] for i in op.inputs],
                                   consts=[const(int(i)) for i in op.inputs],
                                   outputs=[g.tensors[int(i)].shape for i in op.outputs])
            if (why := LIMITS[name](view)):
                reasons.append(f"Coral's limit for {name}: {why}")
        ok = not reasons
        if not ok and first_cpu is None:
            first_cpu = k
        rows.append({"index": k, "op": name, "edgetpu": ok and first_cpu is None, "supported": ok,
                     "reason": "; ".join(reasons) or ("after the split point: runs on the CPU"
                                                      if first_cpu is not None and ok else "")})
    n = len(rows)
    mapped = first_cpu if first_cpu is not None else n
    unsupported = sorted({r["op"] for r in rows if not r["supported"]})
    return {"ops": rows, "op_count": n, "mapped_to_edgetpu": mapped,
            "mapped_fraction": round(mapped / n, 3) if n else 0.0,
            "split_at": None if first_cpu is None else {"index": first_cpu, "op": rows[first_cpu]["op"]},
            "unsupported_ops": unsupported, "advice": [ADVICE[o] for o in unsupported if o in ADVICE],
            "op_types": sorted({r["op"] for r in rows}),
            "method": "predicted from Coral's published op table and its per-op limits"}


def summary_lines(rep: dict) -> list[str]:
    """What the screen shows of a report: the split point, each refused op type once with its
    reason, the advice, and where the per-op list is."""
    done = "compiled by edgetpu_compiler" if rep.get("compiler", {}).get("compiled") else \
        rep["method"] + "; not compiled: " + rep.get("compiler", {}).get("how", "")
    lines = [f"Edge TPU: {rep['mapped_to_edgetpu']}/{rep['op_count']} ops map before the first CPU op"
             + (f" ({rep['split_at']['op']} at #{rep['split_at']['index']})" if rep["split_at"] else "") + f"; {done}"]
    refused: dict[str, list] = {}
    for r in rep["ops"]:
        if not r["supported"]:
            refused.setdefault(r["op"], []).append(r["reason"])
    for op, reasons in refused.items():
        lines.append(f"  runs on the CPU: {op} x{len(reasons)}: " + " | ".join(dict.fromkeys(reasons)))
    lines += [f"  advice: {a}" for a in rep["advice"]]
    lines += compiler_lines(rep)
    if refused:
        lines.append("  every op with its verdict: edgetpu_report.json in the bundle")
    return lines


def compile_if_available(model_path: Path, out_dir: Path, failure_log: Path) -> dict:
    """Run edgetpu_compiler when it is installed; otherwise say exactly how to compile elsewhere.
    A compiler that fails stops the conversion, its output kept in ``failure_log``."""
    exe = shutil.which("edgetpu_compiler")
    if not exe:
        return {"compiled": False,
                "how": "edgetpu_compiler is not installed here; on a Debian/Ubuntu x86-64 machine add Google's Coral "
                       "apt repository, `sudo apt-get install edgetpu-compiler`, and run the same `edgeseg convert "
                       "--target edgetpu` there: it compiles and adds model_edgetpu.tflite to the bundle. The bundle's "
                       f"{model_path.name} is the int8 model the compiler takes."}
    r = subprocess.run([exe, "-s", "-o", str(out_dir), str(model_path)], capture_output=True, text=True, timeout=1800)
    log = r.stdout + r.stderr
    # the compiler also writes its own per-op log next to the model; the -s table says the same
    (out_dir / f"{model_path.stem}_edgetpu.log").unlink(missing_ok=True)
    compiled = out_dir / f"{model_path.stem}_edgetpu.tflite"
    if r.returncode != 0 or not compiled.is_file():
        failure_log.write_text(log)
        raise EdgesegError(f"{failure_log}: edgetpu_compiler failed (exit {r.returncode}); see this log, which is "
                           "kept (--target tflite makes the same int8 model without the compiler step)")
    (out_dir / "edgetpu_compiler.log").write_text(log)
    compiled.rename(out_dir / "model_edgetpu.tflite")
    return {"compiled": True, "log": "edgetpu_compiler.log", "exit": 0, "file": "model_edgetpu.tflite",
            **parse_compiler_log(log)}


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE = r"([\d.]+)(B|KiB|MiB|GiB)"
_FIGURES = {  # what edgetpu_compiler prints (with -s), as published in Coral's docs and issue threads
    "version": (r"Edge TPU Compiler version (\S+)", str),
    "on_chip_used": (rf"On-chip memory used for caching model parameters: {_SIZE}", "bytes"),
    "on_chip_remaining": (rf"On-chip memory remaining for caching model parameters: {_SIZE}", "bytes"),
    "off_chip_used": (rf"Off-chip memory used for streaming uncached model parameters: {_SIZE}", "bytes"),
    "subgraphs": (r"Number of Edge TPU subgraphs: (\d+)", int),
    "op_count": (r"Total number of operations: (\d+)", int),
    "ops_on_edgetpu": (r"Number of operations that will run on Edge TPU: (\d+)", int),
    "ops_on_cpu": (r"Number of operations that will run on CPU: (\d+)", int),
}
MAPPED = "Mapped to Edge TPU"


def parse_compiler_log(text: str) -> dict:
    """The compiler's figures (memory in bytes) and its per-op table, from the text it prints.
    Figures it did not print are absent; it prints the two op counts only when some ops fall
    back to the CPU, so otherwise every op it counted runs on the Edge TPU."""
    out: dict = {}
    for key, (pattern, kind) in _FIGURES.items():
        if (m := re.search(pattern, text)):
            out[key] = round(float(m[1]) * _UNITS[m[2]]) if kind == "bytes" else kind(m[1])
    header = re.search(r"^Operator\s+Count\s+Status", text, re.M)
    table = text[header.end():] if header else ""
    rows = [{"op": m[1], "count": int(m[2]), "status": m[3].strip()}
            for m in re.finditer(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*)$", table, re.M)]
    if rows:
        out["op_table"] = rows
    if "op_count" in out and "ops_on_cpu" not in out and all(r["status"] == MAPPED for r in rows):
        out["ops_on_edgetpu"], out["ops_on_cpu"] = out["op_count"], 0
    return out


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def compiler_lines(rep: dict) -> list[str]:
    """What the compiler reported, and where it differs from edgeseg's prediction by op type."""
    c = rep.get("compiler", {})
    if "op_count" not in c:
        return []
    lines = [f"edgetpu_compiler {c.get('version', '?')}: {c.get('ops_on_edgetpu', '?')}/{c['op_count']} ops on the "
             f"Edge TPU in {c.get('subgraphs', '?')} subgraph(s); on-chip memory "
             f"{_mib(c.get('on_chip_used', 0))} used, {_mib(c.get('on_chip_remaining', 0))} free; off-chip "
             f"{_mib(c.get('off_chip_used', 0))} (predicted: {rep['mapped_to_edgetpu']}/{rep['op_count']})"]
    predicted: dict[str, int] = {}
    for r in rep["ops"]:
        predicted[r["op"]] = predicted.get(r["op"], 0) + int(r["edgetpu"])
    compiled: dict[str, int] = {}
    why: dict[str, set] = {}
    for r in c.get("op_table", []):
        compiled[r["op"]] = compiled.get(r["op"], 0) + (r["count"] if r["status"] == MAPPED else 0)
        if r["status"] != MAPPED:
            why.setdefault(r["op"], set()).add(r["status"])
    if not compiled:  # no per-op table printed: nothing to compare
        return lines
    for op in sorted(set(compiled) | set(predicted)):
        if predicted.get(op, 0) != compiled.get(op, 0):
            lines.append(f"  the compiler differs on {op}: {compiled.get(op, 0)} on the Edge TPU, predicted "
                         f"{predicted.get(op, 0)} ({'; '.join(sorted(why.get(op, ()))) or 'mapped'})")
    return lines
