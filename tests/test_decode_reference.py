"""Decoding agrees with Ultralytics 8.4.190 on the same ONNX (golden outputs made by bench/make_golden.py)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pycocotools.mask as mu
import pytest
from conftest import FIXTURES, MODEL, ROOT, VAL_IMAGES

from edgeseg.convert.split import split_yolo_seg
from edgeseg.fidelity import match_instances
from edgeseg.runtime.decode import FrameResult, Instance, YoloSegDecoder
from edgeseg.runtime.preprocess import preprocess
from edgeseg.runtime.sources import read_image

GOLDEN = json.loads((FIXTURES / "golden_yolo11n.json").read_text())
GOLDEN_Y26 = json.loads((FIXTURES / "golden_yolo26n.json").read_text())


def _image_path(key):
    folder, name = key.split("/")
    return VAL_IMAGES / name if folder == "images" else FIXTURES / "odd_sizes" / name


@pytest.mark.slow  # Ultralytics (torch) predicts the goldens again
def test_golden_was_made_by_the_reference_version():
    """Ultralytics 8.4.190 predicts a few of the golden images again (one of odd size), through
    bench/make_golden.py, and gives what the committed file holds: the goldens are its output."""
    import importlib.util

    ultralytics = pytest.importorskip("ultralytics", reason="the test venv installs ultralytics==8.4.190")
    from ultralytics import YOLO

    for golden in (GOLDEN, GOLDEN_Y26):
        assert golden["ultralytics"] == "8.4.190" and len(golden["images"]) == 106
    assert ultralytics.__version__ == GOLDEN["ultralytics"]
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "bench" / "make_golden.py")
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    model = YOLO(str(MODEL), task="segment")
    for key in ("images/00000.jpg", "images/00042.jpg", "odd_sizes/odd4_333x251.jpg"):
        got, want = make_golden.predict(model, _image_path(key), GOLDEN["conf"], GOLDEN["iou"]), GOLDEN["images"][key]
        assert (got["width"], got["height"]) == (want["width"], want["height"]) and want["instances"], key
        assert [i["class_id"] for i in got["instances"]] == [i["class_id"] for i in want["instances"]], key
        for a, b in zip(got["instances"], want["instances"]):
            assert abs(a["score"] - b["score"]) < 1e-4 and np.abs(np.subtract(a["box"], b["box"])).max() < 1e-2, key
            ma, mb = mu.decode(a["mask"]).astype(bool), mu.decode(b["mask"]).astype(bool)
            assert (ma != mb).sum() <= 0.001 * mb.sum(), (key, int((ma != mb).sum()))


def test_fp32_bundle_matches_ultralytics(fp32_model):
    _matches_golden(fp32_model, GOLDEN)


@pytest.mark.slow  # the only fast test needing the YOLO26 conversion
def test_yolo26_fp32_bundle_matches_ultralytics(y26_fp32_bundle):
    """YOLO26's default export (no DFL, one-to-many head) split per stride and decoded with NMS."""
    from edgeseg.runtime.model import Model

    head = y26_fp32_bundle.manifest.head
    assert (head["type"], head["layout"], head["variant"], head["reg_max"]) == ("yolo26-seg", "split", "one2many", 1)
    with Model.load(y26_fp32_bundle.path) as model:
        _matches_golden(model, GOLDEN_Y26)


def _matches_golden(fp32_model, golden):
    counts_differ, ious, box_err, n = [], [], [], 0
    for key, g in golden["images"].items():
        frame = read_image(_image_path(key))
        assert frame.shape[:2] == (g["height"], g["width"])
        res = fp32_model(frame)
        ref = FrameResult(g["width"], g["height"], [
            Instance(i["class_id"], "", i["score"], np.array(i["box"], np.float32),
                     mu.decode(i["mask"]).astype(bool)) for i in g["instances"]])
        if len(res.instances) != len(ref.instances):
            counts_differ.append(key)
        pairs = match_instances(ref, res, iou_thr=0.5)
        n += len(ref.instances)
        assert len(pairs) == len(ref.instances), key
        for r, t, _ in pairs:
            a, b = ref.instances[r], res.instances[t]
            box_err.append(np.abs(a.box - b.box).max())
            assert abs(a.score - b.score) < 1e-3
            m = b.full_mask(g["height"], g["width"])
            ious.append((a.mask & m).sum() / max((a.mask | m).sum(), 1))
    assert not counts_differ, counts_differ
    assert n > 300
    assert max(box_err) < 1.0, max(box_err)
    # every instance, not only on average: the smallest (a few hundred pixels, where one pixel of
    # the outline weighs most) is at 0.94; a mask cut short by 2 px on two sides falls to 0.89
    worst = int(np.argmin(ious))
    assert ious[worst] >= 0.92, (ious[worst], worst)
    assert np.mean(ious) >= 0.995, np.mean(ious)


@pytest.fixture(scope="module")
def both_layouts():
    m = onnx.load(str(MODEL))
    split, outs = split_yolo_seg(m, "output0", "output1")
    head = {"type": "yolo-seg", "num_classes": 5, "num_masks": 32, "reg_max": 16}
    s_cat = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    s_split = ort.InferenceSession(split.SerializeToString(), providers=["CPUExecutionProvider"])
    d_cat = YoloSegDecoder(dict(head, layout="concat"), [{"name": "output0", "role": "det"},
                                                         {"name": "output1", "role": "protos"}],
                           list("abcde"), (320, 320))
    d_split = YoloSegDecoder(dict(head, layout="split"), outs, list("abcde"), (320, 320))
    names = [o.name for o in s_split.get_outputs()]
    return (lambda x: dict(zip(["output0", "output1"], s_cat.run(None, {"images": x}))), d_cat,
            lambda x: dict(zip(names, s_split.run(None, {"images": x}))), d_split, outs)


def test_split_graph_has_one_output_per_role_and_scale(both_layouts):
    *_, outs = both_layouts
    roles = [o["role"] for o in outs]
    assert roles.count("box_dfl") == roles.count("cls_logits") == roles.count("coef") == 3
    assert roles[-1] == "protos" and sorted({o["stride"] for o in outs[:-1]}) == [8, 16, 32]


@pytest.mark.parametrize("name", ["00000.jpg", "00007.jpg", "00042.jpg"])
def test_split_decode_equals_ultralytics_concat_output(both_layouts, name):
    run_cat, d_cat, run_split, d_split, _ = both_layouts
    x, lb = preprocess(read_image(VAL_IMAGES / name), (320, 320))
    a = d_cat.candidates(run_cat(x), 0.01, None)
    b = d_split.candidates(run_split(x), 0.01, None)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=2e-3)
