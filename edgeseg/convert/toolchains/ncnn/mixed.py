"""Keeping NCNN layers in float by their ONNX node names (``--keep-float``, ``--max-drop``).

pnnx renames every layer (``conv_94``...), so the ONNX names a user reads in Netron, and that
edgeseg's sensitivity ranking produces, do not appear in the ncnn model. A convolution is found by
its weights instead: pnnx copies them unchanged (FP32, layout OIHW), so each ONNX Conv's weight
tensor identifies the one ncnn Convolution holding the same numbers.

Keeping a layer float in ncnn means leaving it out of the int8 rewrite: edgeseg's own writer skips
it (:func:`.int8.quantize`), and for ncnn's tools its entries are dropped from the int8 table, so
``ncnn2int8`` leaves it float.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .int8 import QUANTIZED, TAG_F16, TAG_F32, Layer, _weight_layers, read_param


def _ncnn_weights(param: Path, bin_: Path) -> list[tuple[Layer, np.ndarray | None]]:
    """Each weight layer with its float weights (None where stored otherwise)."""
    layers, _ = read_param(param)
    buf = bin_.read_bytes()
    off, out = 0, []
    for l in _weight_layers(layers):
        nw, nout = l.p(6), l.p(0)
        tag = struct.unpack_from("<I", buf, off)[0]
        if tag == TAG_F32:
            w = np.frombuffer(buf, np.float32, nw, off + 4)
            off += 4 + 4 * nw
        elif tag == TAG_F16:
            w = np.frombuffer(buf, np.float16, nw, off + 4).astype(np.float32)
            off += 4 + ((2 * nw + 3) // 4) * 4
        else:  # already int8: nothing to match, and the walk cannot go on safely
            out.append((l, None))
            break
        if l.p(5):
            off += 4 * nout
        out.append((l, w))
    return out


def _key(w: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()


def onnx_to_ncnn(onnx_path: Path, param: Path, bin_: Path, names: Iterable[str]) -> dict[str, str]:
    """ONNX Conv node names (or their output tensors) -> the ncnn Convolution layers holding their
    weights. Names that are no Conv with constant weights, or have no unique match, are left out."""
    import onnx
    from onnx import numpy_helper

    want = set(names)
    if not want:
        return {}
    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    by_key: dict[str, list[str]] = {}
    for l, w in _ncnn_weights(param, bin_):
        if w is not None and l.type in QUANTIZED:
            by_key.setdefault(_key(w), []).append(l.name)
    found = {}
    for n in model.graph.node:
        hit = want & {n.name, *n.output}
        if not hit or n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        cands = by_key.get(_key(numpy_helper.to_array(inits[n.input[1]]).ravel()), [])
        if len(cands) == 1:  # two convolutions with identical weights: which one is which cannot be told
            for h in hit:
                found[h] = cands[0]
    return found


def drop_from_table(table: Path, layers: Iterable[str]) -> int:
    """Remove ``layers``' weight scales from an ncnn2table table: ncnn2int8 then leaves them float.
    Returns how many lines were dropped."""
    skip = set(layers)
    lines = table.read_text().splitlines()
    # weight lines are "<layer>_param_0 s0 s1 ..."; activation lines "<layer> s"
    keep = [ln for ln in lines if ln.split(" ", 1)[0].removesuffix("_param_0") not in skip]
    table.write_text("\n".join(keep) + "\n")
    return len(lines) - len(keep)
