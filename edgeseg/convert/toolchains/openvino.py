"""OpenVINO toolchain: ``ov.convert_model`` for FP32/FP16 IR, NNCF post-training quantization for INT8.

Both run in a guarded child process (:mod:`._guarded`): OpenVINO's converter and NNCF send usage
events to a remote endpoint unless the user has opted out, and a conversion must not.
"""

from __future__ import annotations

import shutil
import sys

from ...install import pip_extra
from ...options import Option
from ..envs import run_json
from . import Availability, ConvertJob, ConvertResult, Toolchain, probe

XML, BIN = "model.xml", "model.bin"
INSTALL = pip_extra("openvino-host")


class OpenVinoToolchain(Toolchain):
    name = "openvino"
    OPTIONS = {"preset": Option(str, "NNCF preset: mixed (asymmetric activations) or performance (symmetric)",
                                "mixed", ("mixed", "performance")),
               "fast_bias_correction": Option(bool, "NNCF's fast bias correction (false: the full, slower one)", True)}

    # without it OpenVINO and NNCF fall back to their own no-op telemetry stubs
    guard_fallback = frozenset({"openvino_telemetry"})

    @classmethod
    def availability(cls) -> Availability:
        return probe(INSTALL, openvino="openvino", nncf="nncf")

    def guarded_call(self, spec: dict) -> object:
        import numpy as np
        import openvino as ov

        model = ov.convert_model(spec["onnx"])
        if spec["precision"] == "int8":
            import nncf

            data = list(np.load(spec["calibration"]))  # one (1, C, H, W) array per image
            preset = nncf.QuantizationPreset.MIXED if spec["preset"] == "mixed" else \
                nncf.QuantizationPreset.PERFORMANCE
            ignored = spec.get("ignored") or []
            model = nncf.quantize(model, nncf.Dataset(data), preset=preset, subset_size=len(data),
                                  fast_bias_correction=bool(spec.get("fast_bias_correction", True)),
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
        ov.save_model(model, spec["xml"], compress_to_fp16=spec["precision"] == "fp16")
        return True

    def convert(self, job: ConvertJob) -> ConvertResult:
        import numpy as np

        work, log = job.scratch("openvino"), job.log_path("openvino")
        preset = job.settings["preset"]
        fbc = job.settings["fast_bias_correction"]
        ignored = list(job.keep_float)
        spec = {"tool": "openvino", "op": "convert", "onnx": str(job.fp32_path), "precision": job.precision,
                "xml": str(job.workdir / XML), "preset": preset, "ignored": ignored,
                "fast_bias_correction": fbc}
        try:
            if job.precision == "int8":
                spec["calibration"] = str(work / "calibration.npy")
                np.save(spec["calibration"], np.stack(list(job.calib.arrays(job.input))))
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
