"""Semantic segmentation end to end: train a small model (CPU), import ONNX and TorchScript,
convert to INT8, score by mIoU. Needs torch (CI installs the CPU build)."""

import sys

import pytest
from conftest import ROOT, cli

# trains a small semantic model (minutes on 2 cores)
pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch", reason="training the semantic model needs torch: pip install torch==2.13.0")
sys.path.insert(0, str(ROOT / "examples" / "semantic"))
import shapes_semantic  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("semantic")
    return shapes_semantic.train(out, log=lambda m: None)


def _miou(bundle, data):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model

    return evaluate(Model.load(bundle), data, progress=False)


def test_semantic_int8_by_miou(trained, tmp_path):
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    for out, flag in ((fp32, "--fp32"), (int8, "--int8")):
        r = cli("convert", trained["onnx"], flag, "--out", str(out))
        assert r.returncode == 0, r.stderr
    from edgeseg.bundle import Bundle

    m = Bundle.load(int8).manifest
    assert m.head["type"] == "semantic" and m.names[0] == "background" and len(m.names) == 6
    assert m.fidelity["pixel_agreement"] > 0.98
    a, b = _miou(fp32, trained["data"]), _miou(int8, trained["data"])
    assert a["miou"] > 0.3, a  # the model learned the shapes (it is small and trained for ~100 s)
    assert abs(a["miou"] - b["miou"]) <= 0.02, (a, b)
    assert set(a["iou_per_class"]) >= {"background", "circle"}
    # the FP32 bundle as reference: agreement of the label maps, pictures side by side
    r = cli("eval", str(int8), "--data", str(trained["data"]), "--against", str(fp32), "--report",
            str(tmp_path / "rep"), "--json", str(tmp_path / "m.json"), "--limit", "10")
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    assert m["fidelity_reference"].endswith("fp32") and 0.98 < m["fidelity_pixel_agreement"] <= 1.0, m
    assert f"pixel agreement {m['fidelity_pixel_agreement']}" in r.stdout
    from edgeseg.report_samples import SPREAD, WORST

    # the worst-agreeing images, then the median and the best of the rest (10 images: all distinct)
    assert len(list((tmp_path / "rep").glob("side_by_side_*.jpg"))) == WORST + len(SPREAD)


def test_torchscript_import_matches_onnx(trained, tmp_path):
    r = cli("convert", trained["torchscript"], "--fp32", "--trust-model", "--out", str(tmp_path / "ts"))
    assert r.returncode == 0, r.stderr
    r2 = cli("convert", trained["onnx"], "--fp32", "--out", str(tmp_path / "onnx"))
    assert r2.returncode == 0, r2.stderr
    a, b = _miou(tmp_path / "ts", trained["data"]), _miou(tmp_path / "onnx", trained["data"])
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-3)
