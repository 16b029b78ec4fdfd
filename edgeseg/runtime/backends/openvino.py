"""OpenVINO backend: CPU plugin by default; GPU, NPU or AUTO by option."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import EdgesegError
from ...install import pip_extra
from . import Backend, Requirement

REQUIRES = Requirement("openvino", "openvino", pip_extra("openvino"))

OPTIONS = {"device": (str, "CPU, GPU, NPU or AUTO"), "threads": (int, "CPU inference threads"),
           "inference_precision": (str, "CPU arithmetic: f32, f16 or bf16")}


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, bundle, device: str | None = None, threads: int | None = None,
                 inference_precision: str | None = None, **options: Any):
        super().__init__(bundle, **options)
        import openvino as ov

        ro = bundle.manifest.profile.get("runtime_options", {})
        device = device or ro.get("device", "CPU")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = inference_precision or ro.get("inference_precision", "f32")
            threads = threads if threads is not None else int(ro.get("threads", 0))
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        plain = device.split(".")[0]  # GPU.1 names the second GPU
        if ":" not in device and plain not in ("AUTO", "MULTI", "HETERO", "BATCH") and plain not in \
                {d.split(".")[0] for d in core.available_devices}:
            raise EdgesegError(f"{bundle.path}: OpenVINO finds no {device} device here (available: "
                               f"{', '.join(core.available_devices)}); pick one with --runtime-option device=...")
        model = core.read_model(str(bundle.file(bundle.manifest.model_files[0])))
        try:
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as e:  # a driver or plugin missing for that device
            detail = next((ln for ln in reversed(str(e).splitlines()) if ln.strip()), "")
            raise EdgesegError(f"{bundle.path}: OpenVINO cannot compile for {device} ({detail[:200]}); "
                               "try --runtime-option device=CPU") from None
        self.request = self.compiled.create_infer_request()
        self.names = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.request.infer({0: x})
        return {n: np.asarray(res[o]) for n, o in zip(self.names, self.compiled.outputs)}


BACKEND = OpenVinoBackend
