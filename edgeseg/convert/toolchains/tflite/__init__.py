"""TFLite / Edge TPU toolchain: onnx2tf + TensorFlow's converter in an isolated environment.

TensorFlow (1.9 GB with onnx2tf) runs in its own venv created on first use; the resulting model
runs in LiteRT (``ai-edge-litert``) in edgeseg's own environment, which is also the host runner
for fidelity. Outputs stay int8 in the full-integer model: each output's scale and zero point go
into the manifest and edgeseg's decoder dequantizes, so no float tail (DEQUANTIZE, an op the Edge
TPU lacks) is left in the graph.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from ....errors import EdgesegError
from ....install import pip_extra
from ....options import Option
from ...envs import EnvSpec, run_worker
from .. import WORKERS, Availability, ConvertJob, ConvertResult, Toolchain, probe

MODEL_FILE = "model.tflite"
ENV = EnvSpec("tflite-tf2.19", (
    ("tensorflow-cpu==2.19.0", "onnx2tf==1.28.8", "sng4onnx", "onnx_graphsurgeon", "ai-edge-litert", "onnx",
     "onnxslim", "onnxruntime", "protobuf>=5", "psutil", "opencv-python-headless"),
    ("--no-deps", "tf_keras==2.19.0"),  # without --no-deps it pulls the full 645 MB tensorflow as well
))


def weight_signatures(fp32_onnx, nodes: list[str]) -> list[dict]:
    """What finds an ONNX layer again after onnx2tf renamed it: its weights' count, sum and sum of
    magnitudes (a transpose changes none of them). Nodes without a weight (a SiLU's Sigmoid/Mul)
    follow the layer they belong to in the worker."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(fp32_onnx), load_external_data=False).graph
    inits = {i.name: i for i in g.initializer}
    wanted = set(nodes)
    out = []
    for n in g.node:
        if n.name in wanted and n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            w = next((numpy_helper.to_array(inits[i]) for i in n.input[1:2] if i in inits), None)
            if w is not None and w.size > 1:
                out.append({"node": n.name, "size": int(w.size), "sum": float(w.sum(dtype=np.float64)),
                            "abs": float(np.abs(w).sum(dtype=np.float64))})
    return out


class TfliteToolchain(Toolchain):
    name = "tflite"
    OPTIONS = {"io": Option(str, "type of the full-integer model's input and output", "int8", ("int8", "uint8"))}

    @classmethod
    def availability(cls) -> Availability:
        av = probe(pip_extra("tflite"), ai_edge_litert="ai-edge-litert")
        if av.installed:
            av.versions["tensorflow"] = "2.19.0 (isolated env" + (")" if ENV.ready() else ", created on first use)")
        return av

    @classmethod
    def optional_tools(cls, target: str) -> dict[str, str]:
        if target != "edgetpu":
            return {}
        import ctypes
        import platform

        from ....runtime.backends.litert import EDGETPU_LIB

        exe = shutil.which("edgetpu_compiler")
        lib = EDGETPU_LIB.get(platform.system())
        try:  # dlopen by soname, as the delegate will: no ldconfig/gcc/ld child processes as find_library starts
            ctypes.CDLL(lib)
        except (OSError, TypeError):
            lib = None
        return {"edgetpu_compiler": exe or "not on PATH: bundles hold the int8 model and an Edge TPU report "
                                           "predicted from Coral's op table; compile where Google's Coral apt "
                                           "repository is",
                "libedgetpu": lib or "not found: edgetpu bundles run on the CPU here (on the Coral host: "
                                     "sudo apt install libedgetpu1-std)"}

    def convert(self, job: ConvertJob) -> ConvertResult:
        ENV.create(log=job.log)
        work, log = job.scratch("tflite"), job.log_path("tflite")
        try:
            spec = {"onnx": str(job.fp32_path), "precision": job.precision, "out": str(job.workdir / MODEL_FILE),
                    "work": str(work), "io": job.settings["io"]}
            if job.precision == "int8":
                spec["dataset"] = str(job.calib.save_arrays(work, job.input, "nhwc", "float32"))
                if job.keep_float and job.profile.name == "edgetpu":
                    job.log("the Edge TPU runs integer only: --keep-float is ignored for it")
                elif job.keep_float:
                    spec["keep_float"] = weight_signatures(job.fp32_path, job.keep_float)
            res = run_worker(ENV, WORKERS / "tflite_worker.py", spec, work, log)
            text = log.read_text(errors="replace") if log.is_file() else ""
            log.unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        outputs, inp = self._describe(job)
        q: dict = {"precision": job.precision}
        if job.precision == "int8":
            from .edgetpu import compatibility, compile_if_available, summary_lines

            rep = compatibility(job.workdir / MODEL_FILE)
            rep["compiler"] = {"compiled": False, "how": "use --target edgetpu"} if job.profile.name != "edgetpu" \
                else compile_if_available(job.workdir / MODEL_FILE, job.workdir, job.log_path("edgetpu_compiler"))
            (job.workdir / "edgetpu_report.json").write_text(json.dumps(rep, indent=1))
            q.update(scheme="TFLite INT8 with float fallback for the layers kept, float in and out"
                     if res.get("kept_float") else "full-integer TFLite (TFLITE_BUILTINS_INT8), int8 in and out",
                     kept_float=res.get("kept_float", []),
                     edgetpu={k: rep[k] for k in ("op_count", "mapped_to_edgetpu", "mapped_fraction", "split_at",
                                                  "unsupported_ops", "advice")},
                     edgetpu_compiled=rep["compiler"]["compiled"])
            for line in summary_lines(rep):
                job.log(line)
        files = [MODEL_FILE] + (["model_edgetpu.tflite"] if q.get("edgetpu_compiled") else [])
        return ConvertResult(files, outputs, q, {**self.availability().versions, **res.get("versions", {})},
                             input=inp, log=text)

    def _describe(self, job: ConvertJob) -> tuple[list[dict], dict]:
        """Match the TFLite outputs (renamed and reordered by onnx2tf) to edgeseg's roles by shape."""
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(job.workdir / MODEL_FILE))
        details = it.get_output_details()
        by_shape: dict[tuple, list[dict]] = {}
        for d in details:
            by_shape.setdefault(tuple(int(v) for v in d["shape"]), []).append(d)
        outputs = []
        for o in job.outputs:
            s = o["shape"]
            nhwc = tuple([s[0], *s[2:], s[1]]) if len(s) == 4 else tuple(s)
            cands = by_shape.get(nhwc) or by_shape.get(tuple(s))
            if not cands:
                raise EdgesegError(f"{job.workdir / MODEL_FILE}: no TFLite output has the shape of '{o['name']}' {s}")
            d = cands.pop(0)
            scale, zp = d["quantization"]
            entry = dict(o, tensor=d["name"], layout="nhwc" if len(s) == 4 and tuple(d["shape"]) == nhwc else "nchw")
            entry["quant"] = {"scale": float(scale), "zero_point": int(zp), "dtype": np.dtype(d["dtype"]).name} \
                if np.dtype(d["dtype"]).kind in "iu" else None
            outputs.append(entry)
        di = it.get_input_details()[0]
        s, z = di["quantization"]
        inp = {"layout": "nhwc", "dtype": "float32", "tensor": di["name"]}
        if np.dtype(di["dtype"]).kind in "iu":
            inp["quant"] = {"scale": float(s), "zero_point": int(z), "dtype": np.dtype(di["dtype"]).name}
        return outputs, inp


TOOLCHAIN = TfliteToolchain()
