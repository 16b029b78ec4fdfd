"""MNN target, converted and run for real (MNN from PyPI), and proof that converting neither
installs anything nor touches the network (importing MNN.tools would do both)."""

import subprocess
import sys

import pytest

from conftest import DATA_YAML, MODEL

pytest.importorskip("_tools", reason='the MNN target needs: pip install "edgeseg[mnn]"')


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


@pytest.fixture(scope="module")
def mnn_bundles(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("mnn")
    out = {p: convert(MODEL, target="mnn", precision=p, out=d / p, log=lambda m: None) for p in ("fp32", "fp16", "int8w")}
    # 16 images keep CI short; the README figure uses the default 56
    out["int8"] = convert(MODEL, target="mnn", precision="int8", out=d / "int8", calib_images=16, log=lambda m: None)
    return out


def test_mnn_float_bundles_match_onnxruntime(mnn_bundles, fp32_bundle):
    ref = _score(fp32_bundle.path)
    for p in ("fp32", "fp16", "int8w"):
        assert abs(_score(mnn_bundles[p].path) - ref) <= 0.003, p
    assert (mnn_bundles["int8w"].path / "model.mnn").stat().st_size < (mnn_bundles["fp32"].path / "model.mnn").stat().st_size / 3


def test_mnn_full_int8_runs_and_keeps_the_classes(mnn_bundles, fp32_bundle):
    b = mnn_bundles["int8"]
    assert b.manifest.quantization["feature_quantize_method"] == "EMA"
    assert b.manifest.fidelity["cosine"]["cls"] > 0.9 and b.manifest.fidelity["detections_kept"] > 0.8
    # MNN's own calibration loses about 0.03 mask mAP on this model (README); guard against worse
    assert _score(fp32_bundle.path) - _score(b.path) < 0.05
    assert "toolchain.log" in b.manifest.files  # the converter's own log is kept in the bundle


def _guarded(code: str) -> subprocess.CompletedProcess:
    pre = "from edgeseg.convert.toolchains._guarded import install_guard, violations\ninstall_guard()\n"
    return subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=120)


def test_guard_blocks_mnn_tools_network_and_installs():
    r = _guarded("import MNN.tools")
    assert r.returncode != 0 and "blocked importing MNN.tools" in r.stderr
    r = _guarded("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert r.returncode != 0 and "blocked socket." in r.stderr  # getaddrinfo or connect, whichever comes first
    r = _guarded("import os\nos.system('pip --version')")
    assert r.returncode != 0 and "blocked os.system" in r.stderr
    r = _guarded("import subprocess\nsubprocess.run(['pip', 'install', 'aliyun-log-python-sdk'])")
    assert r.returncode != 0 and "blocked subprocess.Popen" in r.stderr


def test_conversion_installs_nothing(mnn_bundles):
    import importlib.util

    assert importlib.util.find_spec("aliyun") is None  # MNN.tools would have pip-installed it
