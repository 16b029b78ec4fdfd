"""OpenVINO toolchain: ``ov.convert_model`` for FP32/FP16 IR, NNCF post-training quantization for INT8.

Both run in a guarded child process (:mod:`._guarded`): OpenVINO's converter and NNCF send usage
events to a remote endpoint unless the user has opted out, and a conversion must not.
"""

from __future__ import annotations

import shutil
import sys

from ...install import pip_extra
from ..envs import run_json
from . import Availability, ConvertJob, ConvertResult, Toolchain, probe

XML, BIN = "model.xml", "model.bin"
INSTALL = pip_extra("openvino-host")


class OpenVinoToolchain(Toolchain):
    name = "openvino"

    @classmethod
    def availability(cls) -> Availability:
        return probe(INSTALL, openvino="openvino", nncf="nncf")

    def convert(self, job: ConvertJob) -> ConvertResult:
        import numpy as np

        work, log = job.scratch("openvino"), job.log_path("openvino")
        preset = str(job.settings.get("preset", "mixed"))
        fbc = str(job.settings.get("fast_bias_correction", True)).lower() not in ("false", "0", "no")
        ignored = list(job.options.get("keep_float") or [])
        spec = {"tool": "openvino", "op": "convert", "onnx": str(job.fp32_path), "precision": job.precision,
                "xml": str(job.workdir / XML), "preset": preset, "ignored": ignored,
                "fast_bias_correction": fbc}
        try:
            if job.precision == "int8":
                assert job.calib is not None
                spec["calibration"] = str(work / "calibration.npy")
                np.save(spec["calibration"], np.stack(list(job.calib.arrays(job.imported.input_hw))))
            rep = run_json([sys.executable, "-m", "edgeseg.convert.toolchains._guarded"], spec, work, log,
                           "OpenVINO conversion", timeout=3600)
            log.unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        q: dict = {"precision": job.precision,
                   "telemetry": "off: " + (", ".join(rep.get("refused_imports") or []) or "nothing") + " refused"}
        if job.precision == "int8":
            q.update(scheme="NNCF post-training quantization (FakeQuantize)", preset=preset,
                     bias_correction="fast" if fbc else "full", weights="int8 per-channel symmetric",
                     activations="int8/uint8 per-tensor", kept_float=ignored)
        elif job.precision == "fp16":
            q.update(scheme="FP16 weights (compressed IR); compute precision set by the runtime hint")
        outputs = [dict(o, quant=None) for o in job.outputs]  # the runtime returns float32
        return ConvertResult([XML, BIN], outputs, q, self.availability().versions)


TOOLCHAIN = OpenVinoToolchain()
