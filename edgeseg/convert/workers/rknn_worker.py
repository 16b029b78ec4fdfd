"""Runs inside the isolated rknn-toolkit2 environment (its pins clash with edgeseg's core).

    <rknn-env>/bin/python edgeseg/convert/workers/rknn_worker.py SPEC.json

Stdlib + numpy + rknn only: it does not import edgeseg. SPEC holds the ONNX path, platform,
quantization settings, a dataset.txt of calibration inputs (.npy, NHWC uint8 RGB, already
letterboxed by edgeseg) and a list of inputs to simulate. Build, export and simulation happen in
this one process because a saved .rknn cannot be loaded into the simulator afterwards.
"""

from __future__ import annotations

import os


def job(spec: dict, result: dict) -> None:
    import numpy as np
    from rknn.api import RKNN

    rk = RKNN(verbose=False)
    cfg = dict(mean_values=spec.get("mean_values", [[0, 0, 0]]), std_values=spec.get("std_values", [[255, 255, 255]]),
               target_platform=spec["platform"],
               quantized_dtype=spec.get("quantized_dtype", "w8a8"),
               quantized_algorithm=spec.get("algorithm", "normal"),
               optimization_level=int(spec.get("optimization_level", 3)))
    if spec.get("disable_rules"):
        cfg["disable_rules"] = spec["disable_rules"]
    if spec.get("float_dtype"):
        cfg["float_dtype"] = spec["float_dtype"]
    ret = rk.config(**cfg)
    ret = rk.load_onnx(model=spec["onnx"], outputs=spec.get("outputs"))
    if ret != 0:
        raise RuntimeError(f"load_onnx returned {ret}")
    if spec.get("hybrid"):
        # hybrid quantization: the listed [input, output] subgraphs stay in float16. Step 1
        # writes <model>.model/.data/.quantization.cfg to the working folder; step 2 builds.
        ret = rk.hybrid_quantization_step1(dataset=spec["dataset"], proposal=False,
                                           custom_hybrid=[list(p) for p in spec["hybrid"]])
        if ret != 0:
            raise RuntimeError(f"hybrid_quantization_step1 returned {ret}")
        stem = os.path.splitext(os.path.basename(spec["onnx"]))[0]
        rk.release()
        rk = RKNN(verbose=False)
        ret = rk.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                           model_quantization_cfg=f"{stem}.quantization.cfg")
        if ret != 0:
            raise RuntimeError(f"hybrid_quantization_step2 returned {ret}")
    else:
        ret = rk.build(do_quantization=bool(spec["quantize"]), dataset=spec.get("dataset"))
        if ret != 0:
            raise RuntimeError(f"build returned {ret}")
    ret = rk.export_rknn(spec["out"])
    if ret != 0:
        raise RuntimeError(f"export_rknn returned {ret}")
    sims = spec.get("simulate") or []
    if sims:
        ret = rk.init_runtime()  # no target: the host simulator
        if ret != 0:
            raise RuntimeError(f"init_runtime (simulator) returned {ret}")
        for item in sims:
            x = np.load(item["input"])
            outs = rk.inference(inputs=[x], data_format="nhwc")
            np.savez_compressed(item["output"], *[np.asarray(o, dtype=np.float32) for o in outs])
    import importlib.metadata as md

    result["versions"] = {"rknn-toolkit2": md.version("rknn-toolkit2"), "numpy": np.__version__}
    rk.release()


if __name__ == "__main__":
    from _protocol import run  # the sibling module: workers never import edgeseg

    run(job)
