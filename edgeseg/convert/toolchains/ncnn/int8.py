"""NCNN INT8 without ncnn's C++ tools: the calibration table and the int8 rewrite, in numpy.

ncnn's ``ncnn2table`` and ``ncnn2int8`` ship with neither PyPI package nor Debian, so edgeseg does
their job on ncnn's documented formats:

* the ``.param`` text format (``Type name n_in n_out in... out... k=v ...``);
* the ``.bin`` layout, walked layer by layer: a Convolution-like layer stores its weights with a
  4-byte tag (0 = raw float32, 0x01306B47 = float16, 0x000D4B38 = int8 padded to 4 bytes),
  then raw float32 bias, then, when ``8=`` (int8_scale_term) is set, raw float32 weight scales
  (one per output channel, or per group for depthwise) and the input blob scale.

Activation scales come from the FP32 model's own blobs on the calibration images (run in the
real ncnn runtime), by the KL-divergence threshold search ncnn2table uses by default; weight
scales are per output channel, 127 / max|w|, as ncnn2int8 computes them. Only Convolution and
ConvolutionDepthWise are quantized (ncnn has no int8 Deconvolution).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TAG_F32, TAG_F16, TAG_I8 = 0x00000000, 0x01306B47, 0x000D4B38
QUANTIZED = ("Convolution", "ConvolutionDepthWise")


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str] = field(default_factory=dict)

    def p(self, key: int, default: int = 0) -> int:
        return int(self.params.get(str(key), default))

    def line(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.params.items())
        return (f"{self.type:<24} {self.name:<24} {len(self.inputs)} {len(self.outputs)} "
                f"{' '.join(self.inputs + self.outputs)}" + (f" {kv}" if kv else ""))


def read_param(path: Path) -> tuple[list[Layer], int]:
    lines = path.read_text().split("\n")
    if lines[0].strip() != "7767517":
        raise ValueError(f"{path}: not an ncnn param file (magic {lines[0]!r})")
    n_layers, n_blobs = (int(v) for v in lines[1].split())
    layers = []
    for ln in lines[2:2 + n_layers]:
        t = ln.split()
        ni, no = int(t[2]), int(t[3])
        ins, outs = t[4:4 + ni], t[4 + ni:4 + ni + no]
        params = dict(kv.split("=", 1) for kv in t[4 + ni + no:])
        layers.append(Layer(t[0], t[1], ins, outs, params))
    return layers, n_blobs


def write_param(path: Path, layers: list[Layer], n_blobs: int) -> None:
    path.write_text("7767517\n" + f"{len(layers)} {n_blobs}\n" + "\n".join(l.line() for l in layers) + "\n")


def _read_tagged(buf: bytes, off: int, n: int) -> tuple[np.ndarray, int]:
    tag = struct.unpack_from("<I", buf, off)[0]
    off += 4
    if tag == TAG_F32:
        return np.frombuffer(buf, np.float32, n, off).copy(), off + 4 * n
    if tag == TAG_F16:
        a = np.frombuffer(buf, np.float16, n, off).astype(np.float32)
        return a, off + ((2 * n + 3) // 4) * 4
    raise ValueError(f"unsupported weight tag 0x{tag:08x} at byte {off - 4}")


def _weight_layers(layers: list[Layer]) -> Iterable[Layer]:
    for l in layers:
        if l.type in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "InnerProduct"):
            yield l
        elif l.type in ("MemoryData", "Embed", "Gemm", "MultiHeadAttention", "LayerNorm", "GroupNorm", "BatchNorm",
                        "Scale", "PReLU", "Bias", "InstanceNorm", "RNN", "LSTM", "GRU", "Convolution1D",
                        "Convolution3D", "ConvolutionDepthWise1D", "Deconvolution1D", "Deconvolution3D"):
            raise ValueError(f"layer {l.name} of type {l.type} stores weights edgeseg's int8 writer does not walk")


def quantize(param: Path, bin_: Path, act_scales: dict[str, float], out_param: Path, out_bin: Path,
             skip: set[str] = frozenset()) -> list[str]:
    """Write an int8 model; ``act_scales`` maps a blob name to its scale (127 / threshold)."""
    layers, n_blobs = read_param(param)
    buf = bin_.read_bytes()
    off = 0
    out = bytearray()
    done = []
    for l in _weight_layers(layers):
        nw, bias = l.p(6), l.p(5)
        nout = l.p(0)
        w, off = _read_tagged(buf, off, nw)
        b = None
        if bias:
            b = np.frombuffer(buf, np.float32, nout, off).copy()
            off += 4 * nout
        if l.p(8):
            raise ValueError(f"layer {l.name} is already int8")
        q = l.type in QUANTIZED and l.name not in skip and l.inputs[0] in act_scales
        if not q:
            out += struct.pack("<I", TAG_F32) + w.astype(np.float32).tobytes()
            if b is not None:
                out += b.astype(np.float32).tobytes()
            continue
        groups = l.p(7, 1) if l.type == "ConvolutionDepthWise" else 1
        rows = nout if groups == 1 else groups
        wm = w.reshape(rows, -1)
        amax = np.abs(wm).max(1)
        wscale = np.where(amax > 0, 127.0 / np.maximum(amax, 1e-12), 1.0).astype(np.float32)
        wq = np.clip(np.round(wm * wscale[:, None]), -127, 127).astype(np.int8).ravel()
        pad = (-len(wq)) % 4
        out += struct.pack("<I", TAG_I8) + wq.tobytes() + b"\0" * pad
        if b is not None:
            out += b.astype(np.float32).tobytes()
        out += wscale.tobytes() + np.float32(act_scales[l.inputs[0]]).tobytes()
        # 2: per-output-channel weight scales (Convolution); 1: per-group (depthwise)
        l.params["8"] = "1" if l.type == "ConvolutionDepthWise" else "2"
        done.append(l.name)
    if off != len(buf):
        raise ValueError(f"{bin_}: walked {off} of {len(buf)} bytes; the layer list and the weights disagree")
    write_param(out_param, layers, n_blobs)
    out_bin.write_bytes(bytes(out))
    return done


def kl_threshold(hist: np.ndarray, bin_width: float, target_bins: int = 128) -> float:
    """TensorRT/ncnn KL calibration: the clip threshold whose 128-level histogram diverges least."""
    hist = hist.astype(np.float64)
    hist[0] = 0  # ncnn ignores exact zeros (ReLU/SiLU outputs would dominate)
    n = len(hist)
    best, best_i = np.inf, n
    total = hist.sum()
    if total == 0:
        return bin_width * n
    for i in range(target_bins, n + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        # quantize p into target_bins, expand back over the non-zero bins
        idx = (np.arange(i) * target_bins // i)
        nz = hist[:i] != 0
        qsum = np.bincount(idx, weights=hist[:i], minlength=target_bins)
        qcnt = np.bincount(idx, weights=nz.astype(np.float64), minlength=target_bins)
        q = np.where(nz, qsum[idx] / np.maximum(qcnt[idx], 1), 0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        pn, qn = p / ps, q / qs
        m = pn > 0
        kl = np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12)))
        if kl < best:
            best, best_i = kl, i
    return (best_i + 0.5) * bin_width


def activation_scales(passes: Callable[[], Iterable[dict[str, np.ndarray]]], bins: int = 2048,
                      methods: Iterable[str] = ("kl",)) -> dict[str, dict[str, float]]:
    """127 / threshold for each blob, per method ("max" or "kl"). ``passes()`` yields {blob: values}
    per calibration image and is called once for the maxima and once more for the histograms when
    KL is asked for, so no image's blobs are held longer than one step."""
    methods = tuple(methods)
    amax: dict[str, float] = {}
    for blobs in passes():
        for k, a in blobs.items():
            amax[k] = max(amax.get(k, 0.0), float(np.abs(a).max()))
    out = {}
    if "max" in methods:
        out["max"] = {k: 127.0 / v if v > 0 else 1.0 for k, v in amax.items()}
    if "kl" in methods:
        hists = {k: np.zeros(bins) for k in amax}
        for blobs in passes():
            for k, a in blobs.items():
                if amax[k] > 0:
                    hists[k] += np.histogram(np.abs(a), bins=bins, range=(0, amax[k]))[0]
        out["kl"] = {k: (127.0 / kl_threshold(hists[k], amax[k] / bins)) if amax[k] > 0 else 1.0 for k in amax}
    return out
