"""YOLO26-seg: no DFL (reg_max 1), one-to-many head decoded with NMS, one-to-one head decoded top-k.

The reference YOLO26n-seg (default export) is checked against Ultralytics' predict in
test_decode_reference.py; here a YOLO26n-seg built from Ultralytics' yaml with random weights
(tests/random_yolo26.py) gives the exports a user can make of it: default, end-to-end, .pt.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL_Y26, VAL_IMAGES, cli

from edgeseg.convert import convert


@pytest.fixture(scope="module")
def random26(tmp_path_factory):
    pytest.importorskip("ultralytics", reason="building a YOLO26 from its yaml needs ultralytics (AGPL, optional): "
                        "pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190")
    d = tmp_path_factory.mktemp("random26")
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "random_yolo26.py"), str(VAL_IMAGES)],
                       check=False, cwd=d, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return d


def _fp32(src: Path, out: Path, **kw):
    return convert(src, target="onnxruntime", precision="fp32", out=out, log=lambda m: None, **kw)


def _results(bundle, n=30, conf=0.25):
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    with Model.load(bundle.path) as m:
        m.thresholds.conf = conf
        return [m(read_image(p)) for p in sorted(VAL_IMAGES.iterdir())[:n]]


def _same_frames(a, b):
    """The same instances in every frame with fewer than max_det of them: a random model saturates
    some scores at 1.0, and which of several equal scores a top-k keeps is arbitrary."""
    compared = [(x, y) for x, y in zip(a, b) if len(x.instances) < 300 and len(y.instances) < 300]
    assert len(compared) >= 20 and sum(len(x.instances) for x, _ in compared) > 20
    for x, y in compared:
        _same(x, y)


def _same(a, b):
    assert len(a.instances) == len(b.instances)
    def key(i):
        return (-round(i.score, 4), i.class_id, *np.round(i.box, 1), i.area)

    for x, y in zip(sorted(a.instances, key=key), sorted(b.instances, key=key)):
        assert x.class_id == y.class_id and abs(x.score - y.score) < 1e-4
        np.testing.assert_allclose(x.box, y.box, atol=0.05)
        assert (x.mask == y.mask).mean() > 0.99


@pytest.mark.slow
def test_end2end_export_is_split_above_its_topk(random26, tmp_path):
    """The one-to-one head cut above the top-k, decoded top-k in numpy without NMS, gives what the
    graph's own top-k gives (the unsplit end-to-end layout)."""
    split = _fp32(random26 / "rand26-e2e.onnx", tmp_path / "split")
    whole = _fp32(random26 / "rand26-e2e.onnx", tmp_path / "whole", split=False)
    h = split.manifest.head
    assert (h["type"], h["layout"], h["variant"], h["reg_max"]) == ("yolo26-seg", "split", "one2one", 1)
    assert whole.manifest.head["layout"] == "end2end"
    assert [o["shape"][1] for o in split.manifest.outputs if o["role"] == "box_dfl"] == [4, 4, 4]
    _same_frames(_results(split), _results(whole))


@pytest.mark.slow
def test_default_export_split_decodes_as_its_concat_output(random26, tmp_path):
    split = _fp32(random26 / "rand26-default.onnx", tmp_path / "split")
    whole = _fp32(random26 / "rand26-default.onnx", tmp_path / "whole", split=False)
    assert split.manifest.head["variant"] == "one2many" and whole.manifest.head["layout"] == "concat"
    _same_frames(_results(split), _results(whole))


@pytest.mark.slow
def test_pt_import_makes_a_bundle_that_runs(random26, tmp_path):
    r = cli("convert", str(random26 / "rand26.pt"), "--trust-model", "--fp32", "--out", str(tmp_path / "b"),
            timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    head = json.loads((tmp_path / "b" / "edgeseg.json").read_text())["head"]
    assert head["type"] == "yolo26-seg" and head["reg_max"] == 1
    r = cli("run", str(tmp_path / "b"), "--source", str(VAL_IMAGES / "00001.jpg"), "--conf", "0.05", "--json", "-")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "instances" in json.loads(r.stdout.splitlines()[0])


@pytest.mark.slow
def test_reference_int8_is_within_0_010_mask_map_of_fp32(y26_int8_bundle, y26_fp32_bundle):
    from conftest import DATA_YAML

    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    f = y26_int8_bundle.manifest.fidelity
    assert y26_int8_bundle.manifest.head["layout"] == "split" and "unusable" not in f
    assert f["cosine"]["cls"] > 0.95 and f["detections_kept"] > 0.85, f
    fp32, int8 = (evaluate(Model.load(b.path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)
                  ["mask_map50_95"] for b in (y26_fp32_bundle, y26_int8_bundle))
    assert fp32 > 0.5 and fp32 - int8 <= 0.010, (fp32, int8)


@pytest.mark.slow  # one more INT8 conversion (the unsplit bundle)
def test_unsplit_int8_is_marked_unusable(int8_nosplit_bundle, tmp_path):
    """--no-split --int8 still writes its bundle (to compare with), but never silently."""
    f = int8_nosplit_bundle.manifest.fidelity
    assert "class scores" in f["unusable"]
    r = cli("run", str(int8_nosplit_bundle.path), "--source", str(VAL_IMAGES / "00001.jpg"), "--max-frames", "1")
    assert r.returncode == 0 and "marked unusable" in r.stderr


def test_reference_default_export_is_recognised():
    from edgeseg.convert.importer import import_model

    im = import_model(MODEL_Y26)
    assert im.head == {"type": "yolo26-seg", "layout": "concat", "variant": "one2many", "num_classes": 5,
                       "num_masks": 32, "reg_max": 1}
    assert import_model(MODEL_Y26, head="yolo-seg").head["type"] == "yolo26-seg"  # --head yolo-seg covers it


def test_split_graph_has_static_split_sizes():
    """YOLO26's export feeds its Split sizes from Constant nodes; onnx2tf took them as dynamic and
    emitted SPLIT_V, which has no full-integer TFLite kernel. The split graph holds them as
    initializers (the TFLite conversion itself: test_yolo26_targets.py)."""
    import onnx

    from edgeseg.convert.importer import import_model
    from edgeseg.heads import get_head

    im = import_model(MODEL_Y26)
    assert any(n.op_type == "Constant" for n in im.model.graph.node)  # the export as it comes
    m, outs, _ = get_head(im.head["type"]).split(im.model, im.head, im.output_roles)
    inits = {t.name for t in m.graph.initializer}
    splits = [n for n in m.graph.node if n.op_type == "Split"]
    assert splits and all(n.input[1] in inits for n in splits)
    assert not any(n.op_type == "Constant" for n in m.graph.node)
    assert len(outs) == 10
    onnx.checker.check_model(m)
