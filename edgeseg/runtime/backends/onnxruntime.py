"""ONNX Runtime backend (CPU execution provider by default)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...install import pip_extra
from . import Backend, Requirement

REQUIRES = Requirement("onnxruntime", "onnxruntime", pip_extra("onnxruntime"))
OPTIONS = {"threads": (int, "intra-op threads"),
           "providers": (list, "execution providers, comma-separated (default CPUExecutionProvider)"),
           "spin": (bool, "spinning worker threads: faster single frames, slower pipelined runs")}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle, threads: int | None = None, providers: list[str] | None = None,
                 spin: bool = False, **options: Any):
        super().__init__(bundle, **options)
        import onnxruntime as ort

        so = ort.SessionOptions()
        threads = threads if threads is not None else int(bundle.manifest.profile.get("runtime_options", {})
                                                          .get("threads", 0))
        if threads:
            so.intra_op_num_threads = threads
        # One frame at a time: parallelism comes from edgeseg's pipeline, not from inter-op threads.
        so.inter_op_num_threads = 1
        if not spin:
            # Idle workers sleep instead of spinning. Spinning shaves ~1 ms off one isolated
            # inference but steals the cores from capture and decode: the pipelined run is
            # faster without it (bench/README). spin=True suits one-frame-at-a-time use.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = bundle.file(bundle.manifest.model_files[0])
        self.session = ort.InferenceSession(str(model), so, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: x})))

    def close(self) -> None:
        # the session's weights and arena go now, not whenever the last reference to the model does
        self.session = None


BACKEND = OnnxRuntimeBackend
