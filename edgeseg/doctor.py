"""``edgeseg doctor``: what is installed for each target, and the command for what is not."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from .profiles import available_profiles, load_profile


def _ver(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def report() -> dict:
    from .convert.toolchains import load_toolchain, toolchain_names
    from .runtime.backends import backend_module, runtime_names

    toolchains, runtimes = toolchain_names(), runtime_names()

    core = {p: _ver(p) for p in ("numpy", "opencv-python-headless", "opencv-python", "typer", "rich", "pycocotools")}
    host = {p: _ver(p) for p in ("onnx", "onnxruntime", "pyyaml", "torch", "ultralytics")}
    targets = []
    for name in sorted(available_profiles()):
        prof = load_profile(name)
        row = {"target": name, "description": prof.description, "toolchain": prof.toolchain, "runtime": prof.runtime}
        if prof.toolchain in toolchains:
            tc = load_toolchain(prof.toolchain)
            av = tc.availability()
            row.update(toolchain_ok=av.installed, toolchain_versions=av.versions, toolchain_install=av.install,
                       optional_tools=tc.optional_tools(name) if av.installed else {})
        else:
            row.update(toolchain_ok=False, toolchain_install="not implemented in this edgeseg version")
        req = getattr(backend_module(prof.runtime), "REQUIRES", None) if prof.runtime in runtimes else None
        if req is not None:
            row.update(runtime_ok=req.installed(), runtime_version=_ver(req.distribution), runtime_install=req.install)
        else:
            row.update(runtime_ok=False, runtime_install="not implemented in this edgeseg version")
        targets.append(row)
    return {"python": sys.version.split()[0], "machine": platform.machine(), "core": core, "host": host,
            "targets": targets}
