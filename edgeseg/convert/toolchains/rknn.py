"""Rockchip RKNN toolchain: rknn-toolkit2 in its own environment, verified in its simulator.

The toolkit pins numpy <= 1.26, onnx <= 1.18, torch <= 2.4 and protobuf <= 4.25, so it runs in
an isolated venv that edgeseg creates on first use (:mod:`..envs`) and drives through
``rknn_worker.py``. A saved ``.rknn`` cannot be simulated, so build, export and simulation
happen in that one worker call: the simulator's outputs on the held-back calibration images
(and on ``--verify-data`` images) are cached by input digest under ``~/.cache/edgeseg/sim``, and
``edgeseg eval`` replays them through edgeseg's own decoder (see ``runtime/backends/rknn.py``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...bundle import sha256_file as _sha256
from ...errors import EdgesegError
from ...options import Option
from ...runtime.replay import Replay, record
from ..calibration import save_inputs
from ..envs import EnvSpec, run_worker
from . import WORKERS, Availability, ConvertJob, ConvertResult, Toolchain

MODEL_FILE = "model.rknn"
ENV = EnvSpec("rknn-toolkit2-2.5.0", (
    ("--no-deps", "rknn-toolkit2==2.5.0"),
    # a lean set that converts correctly (the declared pins pull a 5.6 GB CUDA torch 2.4):
    # torch only to import rknn.api; setuptools < 81 keeps pkg_resources; onnx 1.18 keeps onnx.mapping
    ("torch==2.13.0", "numpy<2.5", "onnx==1.18.0", "onnxruntime", "protobuf<7", "opencv-python-headless", "scipy",
     "psutil", "ruamel.yaml", "tqdm", "fast-histogram", "setuptools<81"),
))


def float_tail_pairs(fp32_onnx: Path) -> list[list[str]]:
    """[input, output] of each output's last convolution: the layers a float tail keeps in FP16."""
    import onnx

    g = onnx.load(str(fp32_onnx), load_external_data=False).graph
    prod = {o: n for n in g.node for o in n.output}
    pairs = []
    for out in g.output:
        node = prod.get(out.name)
        if node is not None and node.op_type == "Conv":
            pairs.append([node.input[0], out.name])
    return pairs


WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# single-input steps between two layers that a float reader must redo in float (a SiLU's Mul reads x and Sigmoid(x))
PASS_THROUGH = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "Mul")


def hybrid_pairs(fp32_onnx: Path, nodes: list[str]) -> list[list[str]]:
    """[input, output] tensor pairs for rknn-toolkit2's custom hybrid quantization (float16
    subgraphs) from ONNX node names (``--keep-float``, the --max-drop search).

    A kept layer must also read float: a subgraph starting at its own input reads that tensor
    dequantized from int8, the very error the ranking measured (an outlier channel). So each subgraph
    starts at the input of the layer feeding it, through that layer's activation (Relu, SiLU), and
    ends after the kept layer's own SiLU (Sigmoid, Mul) when it has one."""
    import onnx

    g = onnx.load(str(fp32_onnx), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    by_name = {n.name: n for n in g.node}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def data_inputs(n) -> list[str]:
        return [i for i in n.input if i and i not in inits]

    def float_start(t: str) -> str:
        """Walk back from tensor ``t`` through activations to the layer producing it; its input."""
        seen = 0
        while seen < 4:
            n = producer.get(t)
            if n is None:
                return t
            ins = data_inputs(n)
            if n.op_type in WEIGHTED:
                return ins[0] if ins else t
            if n.op_type not in PASS_THROUGH or len(set(ins)) != 1 and not (
                    n.op_type == "Mul" and len(ins) == 2 and any(producer.get(i) is not None
                                                                 and producer[i].op_type == "Sigmoid"
                                                                 and ins[0] in producer[i].input for i in ins[1:])):
                return t  # a Concat, Add, Resize...: several tensors meet here, the subgraph starts after it
            t = ins[0]
            seen += 1
        return t

    keep = [by_name[n] for n in dict.fromkeys(nodes) if n in by_name]
    kept = {n.name for n in keep}
    pairs, covered = [], set()
    for n in keep:
        if n.name in covered or n.op_type not in WEIGHTED and any(k.op_type in WEIGHTED for k in keep):
            continue  # a kept Sigmoid/Mul belongs to its layer's subgraph
        end = n.output[0]
        rs = readers.get(end, [])
        sig = [r for r in rs if r.op_type == "Sigmoid"]
        mul = [r for r in rs if r.op_type == "Mul" and (not sig or sig[0].output[0] in r.input)]
        if n.op_type in WEIGHTED and mul and (not sig or sig[0].name in kept or mul[0].name in kept):
            covered.update(r.name for r in sig[:1] + mul[:1])
            end = mul[0].output[0]
        ins = data_inputs(n)
        if ins:
            pairs.append([float_start(ins[0]) if n.op_type in WEIGHTED else ins[0], end])
    return pairs


class RknnToolchain(Toolchain):
    name = "rknn"
    OPTIONS = {
        "algorithm": Option(str, "quantization algorithm (kl_divergence, mmse: slower, lower mean error)", "normal",
                            ("normal", "kl_divergence", "mmse")),
        "scheme": Option(str, "rknn-toolkit2 quantized_dtype", "w8a8",
                         ("w8a8", "w8a16", "w16a16i", "w16a16i_dfp", "w4a16")),
        "float_tail": Option(bool, "each output's last convolution in FP16 (hybrid quantization)", False),
        "disable_rules": Option(list, "rknn-toolkit2 graph optimisation rules to turn off", []),
    }

    @classmethod
    def availability(cls) -> Availability:
        if ENV.ready():
            return Availability(True, {"rknn-toolkit2": "2.5.0 (isolated env)"}, detail=str(ENV.path))
        # Not an error: `edgeseg convert --target rknn` builds the env itself (about a minute, once).
        return Availability(True, {"rknn-toolkit2": "2.5.0 (env created on first use)"},
                            install=f"created automatically in {ENV.path}")

    def convert(self, job: ConvertJob) -> ConvertResult:
        prof = job.profile
        platform = job.platform or prof.platform
        platforms = prof.as_dict().get("platforms") or {}
        if platforms and platform not in platforms:
            raise EdgesegError(f"unknown RKNN platform '{platform}'; choose one of: {', '.join(sorted(platforms))}")
        if job.precision == "fp16" and not platforms.get(platform, {}).get("fp16", True):
            raise EdgesegError(f"{platform} has no FP16 NPU path; convert with --int8")
        ENV.create(log=job.log)
        work, log = job.scratch("rknn"), job.log_path("rknn")
        inp = job.input

        try:
            opts = job.settings
            spec: dict = {"onnx": str(job.fp32_path), "platform": platform, "out": str(job.workdir / MODEL_FILE),
                          "quantize": job.precision == "int8", "algorithm": opts["algorithm"],
                          "quantized_dtype": opts["scheme"], "disable_rules": opts["disable_rules"],
                          # the board is fed raw pixels: the model's scale, mean and std go into it
                          "mean_values": [[m / inp.scale for m in inp.mean]],
                          "std_values": [[s / inp.scale for s in inp.std]]}
            tail = float_tail_pairs(job.fp32_path) if job.precision == "int8" and opts["float_tail"] else []
            kept = hybrid_pairs(job.fp32_path, job.keep_float) if job.precision == "int8" else []
            if tail or kept:
                spec["hybrid"] = tail + [p for p in kept if p not in tail]
            if job.precision == "int8":
                # the toolkit's calibration .npy files follow the ONNX layout (NCHW) ...
                spec["dataset"] = str(job.calib.save_arrays(work / "in", inp, "nchw", "uint8"))
            # ... its simulator is fed what the board is fed (uint8 RGB NHWC); the digest keys the
            # recorded outputs
            sims = save_inputs(job.simulate_images, work / "in", inp, "nhwc", "uint8", "sim")
            spec["simulate"] = [{"input": str(f), "output": str(work / f"out_{d}.npz")} for f, d in sims]
            res = run_worker(ENV, WORKERS / "rknn_worker.py", spec, work, log)
            text = log.read_text(errors="replace") if log.is_file() else ""
            log.unlink(missing_ok=True)
            digest = _sha256(job.workdir / MODEL_FILE)
            names = [o["name"] for o in job.outputs]
            for _, d in sims:
                with np.load(work / f"out_{d}.npz") as z:
                    arrays = [z[f"arr_{k}"] for k in range(len(z.files))]
                if len(arrays) != len(names):
                    raise EdgesegError(f"{log}: the simulator returned {len(arrays)} outputs, expected {len(names)}")
                record(digest, d, {n: a.reshape(o["shape"]) if o.get("shape") else a
                                   for n, a, o in zip(names, arrays, job.outputs)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        q = {"precision": job.precision, "platform": platform}
        if job.precision == "int8":
            q.update(scheme=spec["quantized_dtype"], algorithm=spec["algorithm"], disable_rules=spec["disable_rules"],
                     float_tail=[p[1] for p in tail],
                     kept_float=list(job.keep_float), hybrid=spec.get("hybrid", []))
        outputs = [dict(o, quant=None) for o in job.outputs]  # RKNNLite and the simulator return float32
        return ConvertResult([MODEL_FILE], outputs, q, {**res.get("versions", {}), "platform": platform},
                             input={"layout": "nhwc", "dtype": "uint8",
                                    "note": "scale, mean and std folded into the model"},
                             log=text)

    def host_runner(self, bundle_dir: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        return Replay(_sha256(bundle_dir / MODEL_FILE),
                      "convert again with --verify-data DATASET.yaml (a saved .rknn cannot be simulated)")


TOOLCHAIN = RknnToolchain()
