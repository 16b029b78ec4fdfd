"""NCNN backend through the ncnn Python bindings."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...install import pip_extra
from . import Backend, Requirement

REQUIRES = Requirement("ncnn", "ncnn", pip_extra("ncnn"))

OPTIONS = {"threads": (int, "CPU threads"), "fp16": (bool, "fp16 storage and arithmetic (ARMv8.2)"),
           "int8": (bool, "int8 inference for int8 layers"), "lightmode": (bool, "free blobs early"),
           "packing": (bool, "packed layouts")}


class NcnnBackend(Backend):
    name = "ncnn"

    def __init__(self, bundle, threads: int | None = None, fp16: bool | None = None, int8: bool = True,
                 lightmode: bool = True, packing: bool = True, **options: Any):
        super().__init__(bundle, **options)
        import ncnn

        self._mat = ncnn.Mat
        m = bundle.manifest
        ro = m.profile.get("runtime_options", {})
        self.net = ncnn.Net()
        opt = self.net.opt
        threads = threads if threads is not None else int(ro.get("threads", 0) or 0)
        if threads:
            opt.num_threads = threads
        use_fp16 = bool(ro.get("fp16", False)) if fp16 is None else fp16
        # FP16 storage/arithmetic pays off on ARMv8.2 cores; on x86 it only costs accuracy
        opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = use_fp16
        opt.use_int8_inference = int8
        opt.lightmode = lightmode  # free intermediate blobs early: less memory on small boards
        opt.use_packing_layout = packing
        files = m.model_files
        self.net.load_param(str(bundle.file(files[0])))
        self.net.load_model(str(bundle.file(files[1])))
        self.input_blob = m.input.get("blob", "in0")
        self.outs = [(o["name"], o.get("blob", o["name"]), o.get("shape")) for o in m.outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        ex = self.net.create_extractor()
        ex.input(self.input_blob, self._mat(np.ascontiguousarray(x[0])))
        res = {}
        for name, blob, shape in self.outs:
            ret, m = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"ncnn could not compute {blob}")
            a = np.array(m)
            res[name] = a.reshape(shape) if shape else a[None]
        return res

    def close(self) -> None:
        self.net.clear()


BACKEND = NcnnBackend
