"""LiteRT (TFLite) backend, with the Edge TPU delegate when libedgetpu is present."""

from __future__ import annotations

import logging
import platform
from typing import Any

import numpy as np

from ...install import pip_extra
from . import Backend, Requirement

REQUIRES = Requirement("ai_edge_litert", "ai-edge-litert", pip_extra("tflite"), alternatives=("tflite_runtime",))
OPTIONS = {"threads": (int, "CPU threads"),
           "edgetpu": (bool, "use the Edge TPU delegate when the bundle holds a compiled model")}

log = logging.getLogger(__name__)

EDGETPU_LIB = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class LiteRtBackend(Backend):
    name = "litert"

    def __init__(self, bundle, threads: int | None = None, edgetpu: bool | None = None, **options: Any):
        super().__init__(bundle, **options)
        try:
            from ai_edge_litert.interpreter import Interpreter, load_delegate
        except ImportError:  # the older runtime package
            from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore[no-redef]
        m = bundle.manifest
        files = m.model_files
        delegates = []
        want_tpu = edgetpu if edgetpu is not None else m.target == "edgetpu"
        model = bundle.file(files[0])
        if want_tpu and len(files) > 1:  # the compiled model, when the bundle holds one
            try:
                delegates = [load_delegate(EDGETPU_LIB[platform.system()])]
                model = bundle.file(files[1])
            except (ValueError, OSError, KeyError) as e:
                # the int8 model on CPU threads still gives right answers, ~10x slower: say so
                log.warning("%s: no Edge TPU found (%s); running the int8 model on the CPU. Plug in the Coral "
                            "and install Google's libedgetpu1-std", bundle.path, e)
        elif want_tpu:
            log.warning("%s: the bundle holds no Edge TPU-compiled model (edgetpu_compiler was not installed "
                        "where it was converted); running the int8 model on the CPU. Convert it again with "
                        "--target edgetpu where edgetpu_compiler is on PATH", bundle.path)
        self.on_edgetpu = bool(delegates)
        self.name = "litert+edgetpu" if delegates else "litert"
        ro = m.profile.get("runtime_options", {})
        threads = threads if threads is not None else int(ro.get("threads", 0) or 0) or None
        self.it = Interpreter(model_path=str(model), num_threads=threads, experimental_delegates=delegates or None)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        q = m.input.get("quant")
        self.in_quant = (np.float32(1.0 / q["scale"]), np.float32(q["zero_point"]), np.dtype(q["dtype"])) if q else None
        details = {d["name"]: d for d in self.it.get_output_details()}
        self.outs = [(o["name"], details[o["tensor"]]["index"], o.get("layout", "nchw")) for o in m.outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.in_quant is not None:
            inv, zp, dt = self.in_quant
            info = np.iinfo(dt)
            x = np.clip(np.rint(x * inv + zp), info.min, info.max).astype(dt)
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        res = {}
        for name, idx, layout in self.outs:
            a = self.it.get_tensor(idx)
            # int8 stays int8: the decoder dequantizes with the manifest's scale and zero point
            res[name] = a.transpose(0, 3, 1, 2) if layout == "nhwc" and a.ndim == 4 else a
        return res


BACKEND = LiteRtBackend
