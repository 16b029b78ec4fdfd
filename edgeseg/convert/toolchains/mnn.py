"""MNN toolchain: MNN's converter (FP32, FP16, weight-only INT8) and its calibration tool (full INT8).

Both run through MNN's native ``_tools`` module in a guarded child process
(:mod:`._guarded`): never ``MNN.tools``, whose import pip-installs a logging SDK and sends usage
logs. Calibration images are written letterboxed by edgeseg's own preprocessing, at the model's
input size, so MNN's reader only converts them to RGB and scales by 1/255.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2

from ...errors import EdgesegError
from ..envs import run_json
from . import Availability, ConvertJob, ConvertResult, Toolchain, probe

MODEL_FILE = "model.mnn"
INSTALL = 'pip install "edgeseg[mnn]"'


def run_guarded(spec: dict, workdir: Path, log: Path) -> dict:
    """Run one MNN call in a guarded child process (no network, no installs); output goes to ``log``."""
    rep = run_json([sys.executable, "-m", "edgeseg.convert.toolchains._guarded"], spec, workdir, log,
                   f"MNN {spec['op']}", timeout=3600)
    if rep.get("result") == "False":  # MNN's converter reports failure by returning False
        raise EdgesegError(f"{log}: MNN {spec['op']} failed; see this log, which is kept")
    return rep


class MnnToolchain(Toolchain):
    name = "mnn"
    settable = True

    @classmethod
    def availability(cls) -> Availability:
        return probe(INSTALL, _tools="MNN", MNN="MNN")

    def convert(self, job: ConvertJob) -> ConvertResult:
        work = job.workdir.parent / (job.workdir.name + ".mnn-work")
        work.mkdir(exist_ok=True)
        log = Path(job.options.get("log_dir") or job.workdir.parent) / f"{job.workdir.name.strip('.')}.mnn.log"
        try:
            out = job.workdir / MODEL_FILE
            args = ["-f", "ONNX", "--modelFile", str(job.fp32_path), "--bizCode", "edgeseg"]
            q: dict = {"precision": job.precision}
            if job.precision == "int8":
                fp32 = work / "fp32.mnn"
                run_guarded({"tool": "mnn", "op": "convert", "args": args + ["--MNNModel", str(fp32)]}, work, log)
                q.update(self._quantize(job, fp32, out, work, log))
            else:
                extra = {"fp16": ["--fp16"], "int8w": ["--weightQuantBits", "8"], "fp32": []}[job.precision]
                run_guarded({"tool": "mnn", "op": "convert", "args": args + extra + ["--MNNModel", str(out)]}, work, log)
                if job.precision == "int8w":
                    q.update(scheme="weight-only INT8 (dequantized to float at load: smaller file, same speed)")
                elif job.precision == "fp16":
                    q.update(scheme="FP16 weights")
            text = log.read_text(errors="replace") if log.is_file() else ""
            log.unlink(missing_ok=True)
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        outputs = [dict(o, quant=None) for o in job.outputs]
        return ConvertResult([MODEL_FILE], outputs, q, self.availability().versions, log=text)

    def _quantize(self, job: ConvertJob, fp32: Path, out: Path, work: Path, log: Path) -> dict:
        from ...runtime.preprocess import letterbox
        from ...runtime.sources import read_image

        assert job.calib is not None
        h, w = job.imported.input_hw
        imgdir = work / "calib"
        imgdir.mkdir()
        for i, p in enumerate(job.calib.images):
            img, _ = letterbox(read_image(p), (h, w))
            cv2.imwrite(str(imgdir / f"{i:05d}.png"), img)  # lossless: MNN reads the same pixels
        q = {**job.profile.quantization, **(job.options.get("set") or {})}  # --option KEY=VALUE
        method, wmethod = str(q.get("feature_method", "EMA")), str(q.get("weight_method", "MAX_ABS"))
        cfg = {"format": "RGB", "mean": [0.0, 0.0, 0.0], "normal": [1 / 255.0] * 3, "width": w, "height": h,
               "path": str(imgdir) + "/", "used_image_num": len(job.calib.images),
               "feature_quantize_method": method, "weight_quantize_method": wmethod}
        skip = q.get("skip_quant_op_names") or []
        if isinstance(skip, str):
            skip = [n for n in skip.split(",") if n]
        if skip:
            cfg["skip_quant_op_names"] = list(skip)
        if q.get("feature_clamp_value"):
            cfg["feature_clamp_value"] = int(q["feature_clamp_value"])
        cfg_path = work / "quant.json"
        cfg_path.write_text(json.dumps(cfg))
        run_guarded({"tool": "mnn", "op": "quant", "src": str(fp32), "dst": str(out), "config": str(cfg_path)}, work, log)
        return {"scheme": "MNN full INT8 (weights and activations)", "feature_quantize_method": method,
                "weight_quantize_method": wmethod, "skip_quant_op_names": list(skip),
                "calibration_preprocess": "edgeseg letterbox, written as PNG"}


TOOLCHAIN = MnnToolchain()
