"""ONNX Runtime toolchain: FP32 as is, FP16 by graph conversion, INT8 by static QDQ quantization."""

from __future__ import annotations

import shutil
from pathlib import Path

from ...install import pip_extra
from ...options import Option
from . import Availability, ConvertJob, ConvertResult, Toolchain, probe

MODEL_FILE = "model.onnx"


def _qdq_params(model, output: str) -> dict | None:
    """Scale and zero point of the DequantizeLinear that produces ``output``, if any."""
    import onnx

    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if output in n.output and n.op_type == "DequantizeLinear":
            s, z = inits.get(n.input[1]), inits.get(n.input[2]) if len(n.input) > 2 else None
            if s is not None and s.size == 1:
                return {"scale": float(s), "zero_point": int(z) if z is not None else 0,
                        "dtype": str(z.dtype) if z is not None else "uint8"}
    return None


# edgeseg's names -> onnxruntime.quantization.CalibrationMethod members
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile",
                       "distribution": "Distribution"}


class OnnxRuntimeToolchain(Toolchain):
    name = "onnxruntime"
    OPTIONS = {
        "weights_per_channel": Option(bool, "one int8 scale per output channel of each weight", True),
        "activations": Option(str, "activation type (uint8: asymmetric, as most CPUs run fastest)", "uint8",
                              ("uint8", "int8")),
        "calibration_method": Option(str, "how activation ranges are taken from the calibration images", "minmax",
                                     tuple(CALIBRATION_METHODS)),
    }

    @classmethod
    def availability(cls) -> Availability:
        return probe(pip_extra("host"), onnxruntime="onnxruntime", onnx="onnx")

    def convert(self, job: ConvertJob) -> ConvertResult:
        import onnx

        out = job.workdir / MODEL_FILE
        q: dict = {"precision": job.precision}
        if job.precision == "fp32":
            shutil.copyfile(job.fp32_path, out)
        elif job.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            m = convert_float_to_float16(onnx.load(str(job.fp32_path)), keep_io_types=True)
            onnx.save(m, str(out))
            q.update(scheme="fp16 weights and activations, float32 inputs/outputs")
        else:
            q.update(self._int8(job, out))
        model = onnx.load(str(out))
        outputs = []
        for o in job.outputs:
            o = dict(o)
            o["quant"] = None  # QDQ models hand back float32; nothing to dequantize on the device
            qp = _qdq_params(model, o["name"])
            if qp:
                o["qdq"] = qp
            outputs.append(o)
        return ConvertResult([MODEL_FILE], outputs, q, self.availability().versions)

    def _int8(self, job: ConvertJob, out: Path) -> dict:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from ..calibration import ArrayReader

        pq = job.settings
        method = CALIBRATION_METHODS[pq["calibration_method"]]
        pre = job.workdir.parent / (job.workdir.name + ".pre.onnx")
        try:
            quant_pre_process(str(job.fp32_path), str(pre), skip_symbolic_shape=True)
            keep_float = list(job.keep_float)
            reader = ArrayReader(job.imported.input_name, job.calib.arrays(job.input))
            quantize_static(
                str(pre), str(out), reader,
                quant_format=QuantFormat.QDQ,
                per_channel=pq["weights_per_channel"],
                activation_type=QuantType.QUInt8 if pq["activations"] == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
                nodes_to_exclude=keep_float,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
            if keep_float:
                from ..accuracy import keep_inputs_float

                keep_inputs_float(out, job.fp32_path, keep_float)
        finally:
            pre.unlink(missing_ok=True)
            pre.with_suffix(".onnx.data").unlink(missing_ok=True)
        return {"scheme": "static QDQ",
                "weights": "int8 " + ("per-channel" if pq["weights_per_channel"] else "per-tensor") + " symmetric",
                "activations": pq["activations"] + " per-tensor asymmetric",
                "calibration_method": method, "kept_float": keep_float}


TOOLCHAIN = OnnxRuntimeToolchain()
