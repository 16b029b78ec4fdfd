"""OpenVINO toolchain: ``ov.convert_model`` for FP32/FP16 IR, NNCF post-training quantization for INT8."""

from __future__ import annotations

from . import Availability, ConvertJob, ConvertResult, Toolchain, probe

XML, BIN = "model.xml", "model.bin"
INSTALL = 'pip install "edgeseg[openvino-host]"'


class OpenVinoToolchain(Toolchain):
    name = "openvino"

    @classmethod
    def availability(cls) -> Availability:
        return probe(INSTALL, openvino="openvino", nncf="nncf")

    def convert(self, job: ConvertJob) -> ConvertResult:
        import openvino as ov

        model = ov.convert_model(str(job.fp32_path))
        q: dict = {"precision": job.precision}
        if job.precision == "int8":
            import nncf

            assert job.calib is not None
            data = list(job.calib.arrays(job.imported.input_hw))
            preset = nncf.QuantizationPreset.MIXED if job.profile.quantization.get("preset", "mixed") == "mixed" \
                else nncf.QuantizationPreset.PERFORMANCE
            ignored = job.options.get("keep_float") or []
            model = nncf.quantize(model, nncf.Dataset(data), preset=preset, subset_size=len(data),
                                  ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
            q.update(scheme="NNCF post-training quantization (FakeQuantize)", preset=str(preset.value),
                     weights="int8 per-channel symmetric", activations="int8/uint8 per-tensor",
                     kept_float=ignored)
        ov.save_model(model, str(job.workdir / XML), compress_to_fp16=job.precision == "fp16")
        if job.precision == "fp16":
            q.update(scheme="FP16 weights (compressed IR); compute precision set by the runtime hint")
        outputs = [dict(o, quant=None) for o in job.outputs]  # the runtime returns float32
        return ConvertResult([XML, BIN], outputs, q, self.availability().versions)


TOOLCHAIN = OpenVinoToolchain()
