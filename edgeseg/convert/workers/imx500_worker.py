"""Runs inside the isolated IMX500 environment (Sony MCT + imx500-converter; their pins clash with edgeseg's).

    <imx500-env>/bin/python edgeseg/convert/workers/imx500_worker.py SPEC.json

Does not import edgeseg. SPEC holds the canonical FP32 ONNX (outputs already split by role), a
dataset.txt of calibration inputs (.npy, NCHW float 0..1, letterboxed by edgeseg's own
preprocessing), the quantization options, inputs to run through the quantized model on this host,
and the output folder. Steps: ONNX -> torch.fx (``onnx_fx.py``) -> MCT post-training quantization
(optionally mixed precision against a weights-memory budget, optionally GPTQ) -> MCT's ONNX export
-> host runs of that quantized ONNX (recorded for ``edgeseg eval``) -> ``imxconv-pt`` -> packerOut.zip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def check_translation(model, onnx_path: str, x, tol: float = 1e-4) -> float:
    """Largest error of the fx module against ONNX Runtime on one input, relative to each output's
    range; a wrong translation would otherwise be quantized and shipped without a trace."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        got = model(torch.from_numpy(x))
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    worst = 0.0
    for o, r, g in zip(sess.get_outputs(), ref, got):
        g = g.numpy()
        if g.shape != r.shape:
            raise ValueError(f"torch.fx translation: output {o.name} has shape {g.shape}, ONNX {r.shape}")
        err = float(np.abs(g - r).max() / max(float(np.abs(r).max()), 1e-6))
        if not err <= tol:
            raise ValueError(f"torch.fx translation: output {o.name} differs from ONNX Runtime by {err:.2e} "
                             f"of its range (tolerance {tol:.0e})")
        worst = max(worst, err)
    return worst


def quantize(spec: dict, log) -> tuple[object, dict]:
    import numpy as np
    import onnx
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import model_compression_toolkit as mct
    from edgemdt_tpc import get_target_platform_capabilities
    from onnx_fx import to_fx

    model = to_fx(onnx.load(spec["onnx"]))
    files = [line for line in Path(spec["dataset"]).read_text().splitlines() if line]
    batch = int(spec.get("batch", 4))
    info: dict = {"mixed_precision": False, "gptq": False,
                  "fx_max_error": check_translation(model, spec["onnx"], np.load(files[0]))}
    log(f"torch.fx translation agrees with ONNX Runtime to {info['fx_max_error']:.2e} (relative)")

    def representative():
        for i in range(0, len(files), batch):
            yield [torch.from_numpy(np.concatenate([np.load(f) for f in files[i:i + batch]]))]

    tpc = get_target_platform_capabilities(tpc_version=spec.get("tpc_version", "4.0"), device_type="imx500")
    kw: dict = {"target_platform_capabilities": tpc}
    if spec.get("weights_memory"):
        # mixed precision: MCT picks 8/4/2-bit weights per layer so the weights fit this many bytes
        kw["target_resource_utilization"] = mct.core.ResourceUtilization(weights_memory=float(spec["weights_memory"]))
        kw["core_config"] = mct.core.CoreConfig(
            mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig(num_of_images=min(len(files), 16)))
        info.update(mixed_precision=True, weights_memory=float(spec["weights_memory"]))
    t = time.time()
    if spec.get("gptq"):
        epochs = int(spec.get("gptq_epochs", 5))
        # MCT's Hessian-weighted loss costs ~11 s per iteration x 100 iterations on 2 CPU cores
        # before the first epoch; off unless asked for
        hessian = bool(spec.get("gptq_hessian", False))
        cfg = mct.gptq.get_pytorch_gptq_config(n_epochs=epochs, use_hessian_based_weights=hessian,
                                               use_hessian_sample_attention=hessian)
        q, _ = mct.gptq.pytorch_gradient_post_training_quantization(model, representative, gptq_config=cfg, **kw)
        info.update(gptq=True, gptq_epochs=epochs, gptq_hessian=hessian)
    else:
        q, _ = mct.ptq.pytorch_post_training_quantization(model, representative, **kw)
    info["quantize_seconds"] = round(time.time() - t, 1)
    log(f"quantized in {info['quantize_seconds']} s")

    # MCT's exporter needs the TorchScript-based ONNX exporter (its custom quantizer ops have
    # symbolic functions only there); torch >= 2.9 defaults to the dynamo exporter.
    export = torch.onnx.export
    torch.onnx.export = lambda *a, **k: export(*a, **{**k, "dynamo": False})
    try:
        mct.exporter.pytorch_export_model(q, save_model_path=spec["quantized_onnx"], repr_dataset=representative,
                                          output_names=list(spec["output_names"]))
    finally:
        torch.onnx.export = export
    return q, info


def simulate(spec: dict) -> None:
    """Run the quantized ONNX (MCT's fake-quant custom ops) on each requested input."""
    import numpy as np
    import onnxruntime as ort
    from mct_quantizers import get_ort_session_options

    sess = ort.InferenceSession(spec["quantized_onnx"], get_ort_session_options(), providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    for item in spec.get("simulate") or []:
        outs = sess.run(None, {iname: np.load(item["input"])})
        np.savez_compressed(item["output"], *[np.asarray(o, dtype=np.float32) for o in outs])


def package(spec: dict, log) -> dict:
    out = Path(spec["converter_out"])
    conv = Path(sys.executable).with_name("imxconv-pt")
    argv = [str(conv), "-i", spec["quantized_onnx"], "-o", str(out), "--overwrite-output"]
    if not spec.get("input_persistency", False):
        argv.append("--no-input-persistency")
    t = time.time()
    # the converter leaves /tmp/tmpXXXX folders behind on failure: keep them in our work folder
    env = {**os.environ, "TMPDIR": spec["work"]}
    r = subprocess.run(argv, env=env)
    reports = sorted(out.glob("*_MemoryReport.json"))
    report = json.loads(reports[0].read_text())["Memory Report"] if reports else {}
    if r.returncode != 0 or not (out / "packerOut.zip").is_file():
        raise RuntimeError(f"imxconv-pt failed (exit {r.returncode})"
                           + (f"; memory: {report.get('Memory Usage')} "
                              f"of {report.get('Total Memory Available On Chip')}"
                              if report else ""))
    log(f"imxconv-pt finished in {time.time() - t:.0f} s")
    return report


def job(spec: dict, result: dict) -> None:
    def log(msg: str) -> None:
        print(f"[edgeseg imx500 worker] {msg}", flush=True)

    _, info = quantize(spec, log)
    simulate(spec)
    result["memory_report"] = package(spec, log)
    result["quantization"] = info
    import importlib.metadata as md

    result["versions"] = {d: md.version(d) for d in ("model-compression-toolkit", "mct-quantizers",
                                                     "imx500-converter", "edge-mdt-tpc", "torch")}


if __name__ == "__main__":
    from _protocol import run  # the sibling module: workers never import edgeseg

    run(job)
