"""OpenVINO target, converted and run for real (openvino + nncf from PyPI)."""

import subprocess
import sys

import pytest

from conftest import DATA_YAML, MODEL

pytest.importorskip("openvino", reason='the OpenVINO target needs: pip install "edgeseg[openvino-host]"')
pytest.importorskip("nncf", reason='the OpenVINO target needs: pip install "edgeseg[openvino-host]"')


@pytest.fixture(scope="module")
def ov_bundles(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("ov")
    return {p: convert(MODEL, target="openvino", precision=p, out=d / p, log=lambda m: None) for p in ("fp32", "int8")}


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


def test_openvino_fp32_and_int8_accuracy(ov_bundles, fp32_bundle):
    b = ov_bundles["int8"]
    assert b.manifest.runtime == "openvino" and b.manifest.model_files == ["model.xml", "model.bin"]
    assert b.manifest.fidelity["cosine"]["cls"] > 0.98
    ort_fp32 = _score(fp32_bundle.path)
    ov_fp32, ov_int8 = _score(ov_bundles["fp32"].path), _score(b.path)
    assert abs(ov_fp32 - ort_fp32) <= 0.003, (ov_fp32, ort_fp32)
    assert ort_fp32 - ov_int8 <= 0.010, (ov_int8, ort_fp32)


def test_missing_toolchain_gives_the_install_command(tmp_path):
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, n, p, t=None):\n"
            "        if n.split('.')[0] in {'openvino', 'nncf'}: raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            "sys.argv = ['edgeseg', 'convert', '--target', 'openvino', '--out', sys.argv[1]]\n"
            "from edgeseg.cli import main; main()\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode == 2 and 'pip install "edgeseg[openvino-host]"' in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()
