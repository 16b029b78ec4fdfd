"""Sony IMX500 toolchain: Model Compression Toolkit + imx500-converter in an isolated environment.

MCT, mct-quantizers, uni-pytorch and the converter pin onnx 1.17, protobuf 4.25 and their own
onnxruntime, so they live in a venv created on first use and driven through ``imx500_worker.py``.
The canonical FP32 ONNX (outputs split by role and joined across scales: four tensors, as the
sensor sends at most eight) becomes a torch.fx module, MCT quantizes it with the calibration
images edgeseg preprocessed, and ``imxconv-pt`` writes ``packerOut.zip``. On the Pi,
``imx500-package`` turns that into ``network.rpk`` (see ``runtime/backends/imx500.py``).

The quantized ONNX runs on this host only with MCT's custom operators, i.e. inside that env, so
its outputs on the held-back and ``--verify-data`` images are recorded at conversion and replayed
by ``edgeseg eval`` through edgeseg's decoder (as for the RKNN simulator).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...bundle import sha256_file
from ...errors import EdgesegError
from ...options import Option
from ...runtime.replay import Replay, record
from ..calibration import save_inputs
from ..envs import EnvSpec, run_worker
from . import WORKERS, Availability, ConvertJob, ConvertResult, Toolchain

MODEL_FILE = "packerOut.zip"
QUANTIZED_ONNX = "model_mct.onnx"  # MCT's fake-quantized export: what the converter compiled
ENV = EnvSpec("imx500-mct2.5", (
    # edge-mdt-cl refuses to import without a working torchvision; this is the torch/torchvision
    # pair whose wheels load together here (torch 2.13 CPU with torchvision 0.28 fails on its ops)
    ("torch==2.14.1", "torchvision==0.29.1"),
    ("model-compression-toolkit==2.5.1", "mct-quantizers==1.6.0", "edge-mdt-cl>=1.1.0", "edge-mdt-tpc>=1.2.0",
     "pydantic<2.12", "imx500-converter[pt]==3.19.2", "onnxruntime-extensions", "onnx==1.17.0",
     "torch==2.14.1", "torchvision==0.29.1"),
))


def java_version() -> int | None:
    """The major version of ``java`` on PATH (imxconv-pt needs >= 17), or None."""
    import re
    import subprocess

    java = shutil.which("java")
    if not java:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def estimate_memory(model, persistency: bool = False) -> dict:
    """Rough sensor memory need of an ONNX model, before minutes of quantization.

    Weights at 8 bit plus the largest (inputs + output) of one operator at 8 bit, which tracks the
    converter's "Runtime Memory": for YOLO11n-seg it estimates 3.87 MB at 320 px (converter:
    4.03 MB) and 7.38 MB at 640 px (converter: 7.44 MB without input persistency).
    """
    from onnx import shape_inference

    m = shape_inference.infer_shapes(model)
    g = m.graph
    inits = {t.name for t in g.initializer}
    weights = sum(int(np.prod(t.dims)) for t in g.initializer if len(t.dims) > 1 or np.prod(t.dims) > 1)
    sizes = {}
    for vi in [*g.value_info, *g.input, *g.output]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            sizes[vi.name] = int(np.prod(dims))
    peak = 0
    for n in g.node:
        io = sum(sizes.get(i, 0) for i in n.input if i and i not in inits) + sum(sizes.get(o, 0) for o in n.output)
        peak = max(peak, io)
    inp = sizes.get(g.input[0].name, 0)
    total = weights + peak + (inp if persistency else 0)
    return {"weights_bytes": weights, "working_bytes": peak, "input_bytes": inp if persistency else 0,
            "total_bytes": total}


class Imx500Toolchain(Toolchain):
    name = "imx500"
    OPTIONS = {
        "merge_scales": Option(bool, "one tensor per role (the sensor sends at most 8 tensors per frame)", True),
        "tpc_version": Option(str, "IMX500 target platform capabilities version", "4.0"),
        "mixed_precision": Option(bool, "8/4/2-bit weights to fit weights_memory", False),
        "weights_memory": Option(float, "bytes for mixed precision; 0 = 75% of the weights at 8 bit", 0.0),
        "gptq": Option(bool, "gradient-based PTQ (slower, sometimes closer to FP32)", False),
        "gptq_epochs": Option(int, "GPTQ epochs", 5),
        "gptq_hessian": Option(bool, "MCT's Hessian-weighted GPTQ loss (~20 min more on 2 cores)", False),
        "input_persistency": Option(bool, "keep the input tensor in sensor memory (imgsz*imgsz*3 bytes)", False),
    }

    @classmethod
    def availability(cls) -> Availability:
        jv = java_version()
        if jv is None or jv < 17:
            return Availability(False, install="sudo apt install openjdk-17-jre-headless",
                                detail=("imxconv-pt needs Java >= 17 "
                                        f"({'no java on PATH' if jv is None else f'found Java {jv}'})"))
        state = "isolated env" if ENV.ready() else "env created on first use"
        return Availability(True, {"model-compression-toolkit": f"2.5.1 ({state})", "imx500-converter": "3.19.2",
                                   "java": str(jv)}, detail=str(ENV.path))

    def convert(self, job: ConvertJob) -> ConvertResult:
        import onnx

        from ..split import merge_scales

        prof, opts = job.profile, job.settings
        limits = prof.limits
        log_fn = job.log
        h, w = job.input.hw
        if any(job.input.mean) or any(v != 1 for v in job.input.std):
            raise EdgesegError(f"{job.imported.path}: on the Pi the IMX500 feeds the sensor's pixels straight into the "
                               "network, so it cannot apply --mean/--std; put the normalisation inside the model")
        if max(h, w) > int(limits.get("max_imgsz", 640)):
            raise EdgesegError(f"the IMX500 takes inputs up to {limits.get('max_imgsz', 640)} px, "
                               f"this model is {w}x{h}; "
                               "convert with --imgsz 320 (or 640) from a model with a dynamic input")
        model = onnx.load(str(job.fp32_path))
        outputs = job.outputs
        grids = None
        # every YOLO family split per stride (YOLO26's 9 + protos would exceed the 8 outputs too)
        if opts["merge_scales"] and any(o["role"] == "box_dfl" for o in outputs):
            model, outputs, grids = merge_scales(model, outputs)
        if len(outputs) > int(limits.get("max_outputs", 8)):
            raise EdgesegError(f"the model has {len(outputs)} outputs; the IMX500 sends at most "
                               f"{limits.get('max_outputs', 8)} per frame")
        budget = int(limits.get("memory_bytes", 8388480))
        persist = opts["input_persistency"]
        est = estimate_memory(model, persist)
        mb = lambda b: f"{b / 2**20:.2f} MB"  # noqa: E731
        log_fn(f"IMX500 memory estimate: {mb(est['total_bytes'])} of {mb(budget)} "
               f"(weights {mb(est['weights_bytes'])}, working {mb(est['working_bytes'])})")
        if est["total_bytes"] > float(limits.get("refuse_estimate_above", 1.2)) * budget:
            raise EdgesegError(
                f"{job.imported.path}: needs about {mb(est['total_bytes'])} of the IMX500's {mb(budget)}; "
                f"use a smaller --imgsz (e.g. 320), a nano model"
                + ("" if not persist else ", or --option input_persistency=false"))

        work, log = job.scratch("imx500"), job.log_path("imx500")
        # outlives this call: the bundle's fidelity check compares against it (same output names)
        merged = job.fp32_path.with_name("fp32_imx500.onnx")
        onnx.save(model, str(merged))

        try:
            ds = job.calib.save_arrays(work / "in", job.input, "nchw", "float32")
            sims = save_inputs(job.simulate_images, work / "in", job.input, "nchw", "float32", "sim")
            spec = {"onnx": str(merged), "dataset": str(ds), "work": str(work),
                    "quantized_onnx": str(work / QUANTIZED_ONNX), "converter_out": str(work / "converter"),
                    "output_names": [o["name"] for o in outputs], "tpc_version": opts["tpc_version"],
                    "input_persistency": persist, "gptq": opts["gptq"],
                    "gptq_epochs": opts["gptq_epochs"], "gptq_hessian": opts["gptq_hessian"],
                    "simulate": [{"input": str(f), "output": str(work / f"out_{d}.npz")} for f, d in sims]}
            if opts["mixed_precision"]:
                spec["weights_memory"] = opts["weights_memory"] or 0.75 * est["weights_bytes"]
            ENV.create(log=log_fn)
            log_fn(f"quantizing with MCT on {len(job.calib.images)} images, then imxconv-pt (a few minutes)")
            res = run_worker(ENV, WORKERS / "imx500_worker.py", spec, work, log)
            text = log.read_text(errors="replace") if log.is_file() else ""
            log.unlink(missing_ok=True)
            shutil.copyfile(work / "converter" / MODEL_FILE, job.workdir / MODEL_FILE)
            digest = sha256_file(job.workdir / MODEL_FILE)
            names = [o["name"] for o in outputs]
            for _, d in sims:
                with np.load(work / f"out_{d}.npz") as z:
                    arrays = [z[f"arr_{k}"] for k in range(len(z.files))]
                record(digest, d, dict(zip(names, arrays)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rep = res.get("memory_report", {})
        log_fn(f"IMX500 memory: {rep.get('Memory Usage')} of {rep.get('Total Memory Available On Chip')} "
               f"({rep.get('Memory Utilization')}), fits in chip: {rep.get('Fit In Chip')}")
        if rep and rep.get("Fit In Chip") is False:
            raise EdgesegError(f"{job.imported.path}: the converter reports {rep.get('Memory Usage')} of "
                               f"{rep.get('Total Memory Available On Chip')}: does not fit; use a smaller --imgsz "
                               "or --option mixed_precision=true")
        (job.workdir / "memory_report.json").write_text(json.dumps(rep, indent=1))
        quant = {"precision": "int8", "scheme": prof.quantization.get("scheme"), **res.get("quantization", {}),
                 "input_persistency": persist, "memory": rep, "memory_estimate": est,
                 "nms": "on the Pi (edgeseg's decoder): thresholds stay adjustable at run time"}
        return ConvertResult([MODEL_FILE], [dict(o, quant=None) for o in outputs], quant,
                             res.get("versions", {}),
                             input={"layout": "nchw", "dtype": "float32",
                                    "sensor": {"format": "uint8 RGB", "scale": 1 / 256,
                                               "note": "on the Pi the sensor's ISP crops and scales into the input"}},
                             log=text, head={"grids": grids} if grids else {}, reference_onnx=merged)

    def host_runner(self, bundle_dir: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        return Replay(sha256_file(bundle_dir / MODEL_FILE), "convert again with --verify-data DATASET.yaml")


TOOLCHAIN = Imx500Toolchain()
