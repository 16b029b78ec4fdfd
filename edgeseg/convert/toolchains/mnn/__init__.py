"""MNN toolchain: MNN's converter for every precision; full INT8 from edgeseg's calibration or MNN's tool.

Full INT8 (``int8_tool``):

- ``edgeseg`` (default): activation ranges measured on the split FP32 ONNX with the calibration
  arrays, handed to MNN's converter as compression parameters (:mod:`.int8`); MNN itself
  quantizes the weights and writes the int8 model.
- ``mnnquant``: MNN's calibration tool on the same images, written letterboxed by edgeseg's own
  preprocessing so MNN's reader only converts them to RGB and scales by 1/255.

MNN runs through its native ``_tools`` module in a guarded child process (:mod:`.._guarded`): never
``MNN.tools``, whose import pip-installs a logging SDK and sends usage logs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ....errors import EdgesegError
from ....install import pip_extra
from ....options import Option
from ...envs import run_json
from .. import Availability, ConvertJob, ConvertResult, Toolchain, probe

MODEL_FILE = "model.mnn"
INSTALL = pip_extra("mnn")


def run_guarded(spec: dict, workdir: Path, log: Path) -> dict:
    """Run one MNN call in a guarded child process (no network, no installs); output goes to ``log``."""
    rep = run_json([sys.executable, "-m", "edgeseg.convert.toolchains._guarded"], spec, workdir, log,
                   f"MNN {spec['op']}", timeout=3600)
    if rep.get("result") == "False":  # MNN's converter reports failure by returning False
        raise EdgesegError(f"{log}: MNN {spec['op']} failed; see this log, which is kept")
    return rep


class MnnToolchain(Toolchain):
    name = "mnn"
    OPTIONS = {
        "int8_tool": Option(str, "full INT8 from edgeseg's calibration or MNN's own mnnquant", "edgeseg",
                            ("edgeseg", "mnnquant")),
        "activation_ranges": Option(str, "edgeseg: activation ranges from the calibration images (minmax, or "
                                    "percentile 99.999: outliers clipped)", "minmax", ("minmax", "percentile")),
        "feature_method": Option(str, "mnnquant: activation range method", "EMA", ("EMA", "KL", "ADMM")),
        "weight_method": Option(str, "mnnquant: weight quantization method", "MAX_ABS", ("MAX_ABS", "ADMM")),
        "skip_quant_op_names": Option(list, "mnnquant: MNN op names to keep in float (a,b,c)", []),
        "feature_clamp_value": Option(int, "mnnquant: activation clamp (0: MNN's default, 127)", 0),
    }
    load_check = True  # a tensor with two int8 parameter sets makes MNN loads differ (int8.shared_ranges)

    # importing MNN.tools runs `pip install aliyun-log-python-sdk` and sends usage logs
    guard_blocked = frozenset({"aliyun", "MNN.tools"})

    @classmethod
    def availability(cls) -> Availability:
        return probe(INSTALL, _tools="MNN", MNN="MNN")

    def guarded_call(self, spec: dict) -> object:
        import _tools  # MNN's native converter module; deliberately not MNN.tools

        if spec["op"] == "convert":
            return _tools.mnnconvert(["MNNConvert", *spec["args"]])
        if spec["op"] == "quant":  # an argv-style list: three plain strings crash it (std::length_error)
            return _tools.mnnquant(["mnnquant", spec["src"], spec["dst"], spec["config"]])
        raise ValueError(spec["op"])

    def convert(self, job: ConvertJob) -> ConvertResult:
        work, log = job.scratch("mnn"), job.log_path("mnn")
        try:
            out = job.workdir / MODEL_FILE
            args = ["-f", "ONNX", "--modelFile", str(job.fp32_path), "--bizCode", "edgeseg"]
            q: dict = {"precision": job.precision}
            if job.precision == "int8" and job.settings["int8_tool"] == "edgeseg":
                q.update(self._int8_edgeseg(job, args, out, work, log))
            elif job.precision == "int8":
                fp32 = work / "fp32.mnn"
                run_guarded({"tool": "mnn", "op": "convert", "args": args + ["--MNNModel", str(fp32)]}, work, log)
                q.update(self._quantize(job, fp32, out, work, log))
            else:
                extra = {"fp16": ["--fp16"], "int8w": ["--weightQuantBits", "8"], "fp32": []}[job.precision]
                run_guarded({"tool": "mnn", "op": "convert", "args": args + extra + ["--MNNModel", str(out)]},
                            work, log)
                if job.precision == "int8w":
                    q.update(scheme="weight-only INT8 (dequantized to float at load: smaller file, same speed)")
                elif job.precision == "fp16":
                    q.update(scheme="FP16 weights")
            if job.precision == "int8":
                q.update(self._check_int8(job, out, work, log))
            text = log.read_text(errors="replace") if log.is_file() else ""
            log.unlink(missing_ok=True)
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        outputs = [dict(o, quant=None) for o in job.outputs]
        return ConvertResult([MODEL_FILE], outputs, q, self.availability().versions, log=text)

    def _int8_edgeseg(self, job: ConvertJob, args: list[str], out: Path, work: Path, log: Path) -> dict:
        import onnx

        from .int8 import compression_params, conv_layers, shared_ranges, tensor_ranges

        keep = list(job.keep_float)
        model = onnx.load(str(job.fp32_path))
        layers = conv_layers(model, keep)
        if not layers:
            raise EdgesegError(f"{job.fp32_path}: no convolution left to quantize; convert with --fp16 or --int8w")
        ranges = shared_ranges(model, tensor_ranges(job.fp32_path, job.imported.input_name,
                                                    job.calib.arrays(job.input), job.settings["activation_ranges"]))
        params = work / "compression.json"  # the .json suffix tells MNN's converter to read JSON
        params.write_text(json.dumps(compression_params(layers, ranges)))
        run_guarded({"tool": "mnn", "op": "convert",
                     "args": args + ["--compressionParamsFile", str(params), "--MNNModel", str(out)]}, work, log)
        return {"scheme": "MNN full INT8 convolutions (MNN converter, edgeseg calibration as compression parameters)",
                "int8_tool": "edgeseg",
                "activations": f"int8 per-tensor asymmetric, {job.settings['activation_ranges']}, one range per "
                               "group of tensors joined by "
                               "concat/resize/split/slice (MNN keeps int8 parameters per tensor)",
                "weights": "int8 per-channel symmetric", "requested_convolutions": len(layers),
                "kept_float": keep + ["convolutions producing the model outputs"]}

    def _check_int8(self, job: ConvertJob, out: Path, work: Path, log: Path) -> dict:
        # MNN's converter drops compression parameters it cannot place without a word (before the
        # ReLU-fusion fix, a ReLU network came out all float while the manifest said int8), so
        # count what it wrote.
        from .int8 import int8_convolutions

        dump = work / "model.json"
        run_guarded({"tool": "mnn", "op": "convert",
                     "args": ["-f", "MNN", "--modelFile", str(out), "--JsonFile", str(dump)]}, work, log)
        n8, n = int8_convolutions(dump)
        if n8 == 0:
            raise EdgesegError(f"{job.imported.path}: MNN wrote no int8 convolution (of {n}); "
                               "convert with --int8w or --fp16, or try --option int8_tool=mnnquant")
        return {"quantized_convolutions": n8, "convolutions": n}

    def _quantize(self, job: ConvertJob, fp32: Path, out: Path, work: Path, log: Path) -> dict:
        spec = job.input
        h, w = spec.hw
        imgdir = work / "calib"
        job.calib.save_images(imgdir, spec)
        q = job.settings
        method, wmethod = q["feature_method"], q["weight_method"]
        # MNN computes (pixel - mean) * normal: edgeseg's (pixel * scale - mean) / std in pixel units
        cfg = {"format": spec.color.upper(), "mean": [m / spec.scale for m in spec.mean],
               "normal": [spec.scale / s for s in spec.std], "width": w, "height": h,
               "path": str(imgdir) + "/", "used_image_num": len(job.calib.images),
               "feature_quantize_method": method, "weight_quantize_method": wmethod}
        skip = q["skip_quant_op_names"]
        if skip:
            cfg["skip_quant_op_names"] = list(skip)
        if q["feature_clamp_value"]:
            cfg["feature_clamp_value"] = q["feature_clamp_value"]
        cfg_path = work / "quant.json"
        cfg_path.write_text(json.dumps(cfg))
        run_guarded({"tool": "mnn", "op": "quant", "src": str(fp32), "dst": str(out), "config": str(cfg_path)},
                    work, log)
        return {"scheme": "MNN full INT8 (weights and activations)", "int8_tool": "mnnquant",
                "feature_quantize_method": method,
                "weight_quantize_method": wmethod, "skip_quant_op_names": list(skip),
                "calibration_preprocess": "edgeseg letterbox, written as PNG"}


TOOLCHAIN = MnnToolchain()
