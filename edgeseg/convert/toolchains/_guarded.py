"""Run a vendor tool's Python entry point in this (child) process with the network and installs cut off.

    python -m edgeseg.convert.toolchains._guarded SPEC.json

Some toolchains phone home or pip-install packages as a side effect (importing ``MNN.tools``
runs ``pip install aliyun-log-python-sdk`` and sends usage logs; OpenVINO's converter and NNCF
send usage events unless a consent file in the user's home says no). A conversion must do neither,
so this wrapper installs an audit hook before anything vendor-made is imported: every socket
connection, subprocess, ``os.system`` and import of a known logger raises, and is recorded in
the JSON report the parent reads. With ``openvino_telemetry`` unimportable, OpenVINO and NNCF
fall back to their own no-op telemetry stubs. The tool itself runs in this separate process
because native converters can abort the interpreter (SIGABRT) on bad input, and because a parent
that imported openvino may already hold the telemetry package (a user who opted in: edgeseg/__init__.py).
"""

from __future__ import annotations

import importlib.abc
import json
import sys

BLOCKED_MODULES = {"aliyun", "MNN.tools", "openvino_telemetry"}
# imports the vendor wraps in try/except ImportError with a no-op fallback: refused, not an error
FALLBACK_MODULES = {"openvino_telemetry"}
BLOCKED_EVENTS = {"socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.system", "os.exec",
                  "os.posix_spawn", "os.spawn", "os.fork", "urllib.Request"}

violations: list[str] = []
refused: list[str] = []  # FALLBACK_MODULES imports turned away (reported, harmless)


def _from_find_library() -> bool:
    # ctypes.util.find_library runs `ldconfig -p` (or gcc/ld) to locate a shared library: a local
    # lookup that CUDA-aware packages do at import time, not an install or a network call
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.replace("\\", "/").endswith("ctypes/util.py"):
            return True
        f = f.f_back
    return False


def _hook(event: str, args: tuple) -> None:
    if event == "subprocess.Popen" and _from_find_library():
        return
    if event in BLOCKED_EVENTS:
        violations.append(f"{event} {args[:2]!r}")
        raise PermissionError(f"edgeseg blocked {event} during a conversion")


class _BlockImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == m or name.startswith(m + ".") for m in BLOCKED_MODULES):
            fallback = any(name == m or name.startswith(m + ".") for m in FALLBACK_MODULES)
            (refused if fallback else violations).append(f"import {name}")
            raise ImportError(f"edgeseg blocked importing {name} during a conversion", name=name)


def install_guard() -> None:
    sys.meta_path.insert(0, _BlockImports())
    sys.addaudithook(_hook)


def _mnn(spec: dict) -> object:
    import _tools  # MNN's native converter module; deliberately not MNN.tools

    if spec["op"] == "convert":
        return _tools.mnnconvert(["MNNConvert", *spec["args"]])
    if spec["op"] == "quant":  # an argv-style list: three plain strings crash it (std::length_error)
        return _tools.mnnquant(["mnnquant", spec["src"], spec["dst"], spec["config"]])
    raise ValueError(spec["op"])


def _openvino(spec: dict) -> object:
    import numpy as np
    import openvino as ov

    model = ov.convert_model(spec["onnx"])
    if spec["precision"] == "int8":
        import nncf

        data = list(np.load(spec["calibration"]))  # one (1, C, H, W) array per image
        preset = nncf.QuantizationPreset.MIXED if spec["preset"] == "mixed" else nncf.QuantizationPreset.PERFORMANCE
        ignored = spec.get("ignored") or []
        model = nncf.quantize(model, nncf.Dataset(data), preset=preset, subset_size=len(data),
                              fast_bias_correction=bool(spec.get("fast_bias_correction", True)),
                              ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None)
    ov.save_model(model, spec["xml"], compress_to_fp16=spec["precision"] == "fp16")
    return True


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    report_path = spec["result"]
    install_guard()
    result, error = None, None
    try:
        result = {"mnn": _mnn, "openvino": _openvino}[spec["tool"]](spec)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        error = f"{type(e).__name__}: {e}"
    if violations:  # the tool may have swallowed the PermissionError: say what it tried
        error = f"it tried {violations[0]} during the conversion and was stopped"
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump({"result": repr(result), "error": error, "violations": violations,
                   "refused_imports": sorted(set(refused))}, f)
    sys.stdout.flush()
    sys.exit(1 if error or violations else 0)


if __name__ == "__main__":
    main()
