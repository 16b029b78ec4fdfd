"""Run a vendor tool's Python entry point in this (child) process with the network and installs cut off.

    python -m edgeseg.convert.toolchains._guarded SPEC.json

``SPEC["tool"]`` names the toolchain whose ``guarded_call(spec)`` runs here; each toolchain lists
the modules of its vendor that must never load (``guard_blocked``, ``guard_fallback``).

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

# filled by install_guard from every toolchain's ``guard_blocked`` / ``guard_fallback``
BLOCKED_MODULES: set[str] = set()
# imports the vendor wraps in try/except ImportError with a no-op fallback: refused, not an error
FALLBACK_MODULES: set[str] = set()
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
    """Block every toolchain's phone-home modules, then network, subprocesses and installs."""
    from . import load_toolchain, toolchain_names

    for name in toolchain_names():
        tc = load_toolchain(name)
        BLOCKED_MODULES.update(tc.guard_blocked | tc.guard_fallback)
        FALLBACK_MODULES.update(tc.guard_fallback)
    sys.meta_path.insert(0, _BlockImports())
    sys.addaudithook(_hook)


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    report_path = spec["result"]
    from . import load_toolchain

    toolchain = load_toolchain(spec["tool"])  # edgeseg's own module; the vendor's is imported by guarded_call
    install_guard()
    result, error = None, None
    try:
        result = toolchain.guarded_call(spec)
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
