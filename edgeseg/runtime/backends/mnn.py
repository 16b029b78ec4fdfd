"""MNN backend through MNN's Python module API (``MNN.nn.load_module_from_file``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...install import pip_extra
from ...quiet import native_stdout_silenced
from . import Backend, Requirement

REQUIRES = Requirement("MNN", "MNN", pip_extra("mnn"))

OPTIONS = {"threads": (int, "CPU threads"), "precision": (str, "normal, high or low (fp16 where the CPU has it)")}


class MnnBackend(Backend):
    name = "mnn"

    def __init__(self, bundle, threads: int | None = None, precision: str | None = None, **options: Any):
        super().__init__(bundle, **options)
        with native_stdout_silenced():  # MNN prints a CPU-feature banner when it loads
            import MNN.expr as F
            from MNN import nn

        self.F = F
        m = bundle.manifest
        ro = m.profile.get("runtime_options", {})
        self.names = [o["name"] for o in m.outputs]
        threads = threads if threads is not None else int(ro.get("threads", 0) or 0)
        config = {"precision": precision or ro.get("precision", "normal"), "backend": ro.get("backend", "CPU"),
                  "numThread": threads or os.cpu_count() or 1}
        rt = nn.create_runtime_manager((config,))
        self.module = nn.load_module_from_file(str(bundle.file(m.model_files[0])), [m.input["name"]], self.names,
                                               runtime_manager=rt)
        self.shape = [1, 3, m.input["height"], m.input["width"]]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        F = self.F  # noqa: N806 - MNN's own name for its expression module
        ys = self.module.forward([F.const(x, self.shape, F.NCHW)])
        out = {}
        for n, y in zip(self.names, ys):
            if y.data_format != F.NCHW:
                y = F.convert(y, F.NCHW)
            out[n] = np.array(y.read(), copy=True)  # the Var's buffer is reused by the next forward
        return out


BACKEND = MnnBackend
