from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "edgeseg" / "assets"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VAL_IMAGES = ASSETS / "shapes" / "val" / "images"
DATA_YAML = ASSETS / "shapes" / "shapes.yaml"
MODEL = ASSETS / "shapes-yolo11n-seg.onnx"
# the reference YOLOv8n-seg: no attention block, the architecture the Edge TPU maps whole
MODEL_V8 = FIXTURES / "shapes-yolov8n-seg.onnx"


def cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess, as a user would."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def convert_without(modules: set[str], target: str, out: Path) -> subprocess.CompletedProcess:
    """``edgeseg convert --target TARGET`` in a process where importing ``modules`` fails, as on a
    machine without that toolchain."""
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, n, p, t=None):\n"
            f"        if n.split('.')[0] in {sorted(modules)!r}: raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            f"sys.argv = ['edgeseg', 'convert', '--target', {target!r}, '--out', sys.argv[1]]\n"
            "from edgeseg.cli import main; main()\n")
    return subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)


def _convert(tmp_path_factory, name: str, **kw):
    from edgeseg.convert import convert

    out = tmp_path_factory.mktemp("bundles") / name
    return convert(MODEL, target="onnxruntime", out=out, log=lambda m: None, **kw)


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "fp32", precision="fp32")


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "int8", precision="int8")


@pytest.fixture(scope="session")
def int8_nosplit_bundle(tmp_path_factory):
    return _convert(tmp_path_factory, "int8_nosplit", precision="int8", split=False)


@pytest.fixture(scope="session")
def fp32_model(fp32_bundle):
    from edgeseg.runtime.model import Model

    return Model.load(fp32_bundle.path)
