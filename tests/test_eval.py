"""Accuracy on the reference validation set (the foundation issue's "done when" figures)."""

import json

import pytest
from conftest import DATA_YAML, MODEL_V8, cli

from edgeseg.eval import evaluate
from edgeseg.runtime.model import Model, Thresholds

ULTRALYTICS_FP32_MASK_MAP = 0.825  # ../shared/reference/README.md, Ultralytics 8.4.190 val on this ONNX
ULTRALYTICS_V8_FP32_MASK_MAP = 0.749  # the same, for the reference YOLOv8n-seg ONNX


@pytest.fixture(scope="module")
def scores(fp32_bundle, int8_bundle, int8_nosplit_bundle):
    out = {}
    for name, b in [("fp32", fp32_bundle), ("int8", int8_bundle), ("nosplit", int8_nosplit_bundle)]:
        out[name] = evaluate(Model.load(b.path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)
    return out


@pytest.mark.slow  # the full labeled set at conf 0.001
def test_fp32_matches_ultralytics_figure(scores):
    s = scores["fp32"]
    assert s["images"] == 100
    assert abs(s["mask_map50_95"] - ULTRALYTICS_FP32_MASK_MAP) <= 0.010, s
    assert abs(s["box_map50_95"] - 0.828) <= 0.010, s
    assert s["mask_map50_95_full_res"] < s["mask_map50_95"]  # full resolution is the stricter measure


@pytest.mark.slow  # the full labeled set at conf 0.001
def test_int8_within_a_hair_of_fp32(scores):
    assert scores["fp32"]["mask_map50_95"] - scores["int8"]["mask_map50_95"] <= 0.010, (scores["fp32"], scores["int8"])


@pytest.mark.slow  # two conversions and two runs over the full labeled set
def test_yolov8_fp32_and_int8_meet_the_same_goals(tmp_path):
    """The second reference architecture (YOLOv8's C2f head instead of YOLO11's C3k2 + attention)
    through the same import, split and ONNX Runtime INT8."""
    from edgeseg.convert import convert

    s = {p: evaluate(Model.load(convert(MODEL_V8, precision=p, out=tmp_path / p, log=lambda m: None).path,
                                thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]
         for p in ("fp32", "int8")}
    assert abs(s["fp32"] - ULTRALYTICS_V8_FP32_MASK_MAP) <= 0.010, s
    assert s["fp32"] - s["int8"] <= 0.010, s


@pytest.mark.slow  # the full labeled set at conf 0.001
def test_unsplit_int8_detects_nothing(scores):
    assert scores["nosplit"]["mask_map50_95"] < 0.05


def test_eval_cli_json_fidelity_and_report(int8_bundle, fp32_bundle, tmp_path):
    js, rep = tmp_path / "m.json", tmp_path / "report"
    r = cli("eval", str(int8_bundle.path), "--data", str(DATA_YAML), "--json", str(js), "--against",
            str(fp32_bundle.path), "--report", str(rep), "--limit", "30")
    assert r.returncode == 0, r.stderr
    d = json.loads(js.read_text())
    for k in ("mask_map50_95", "mask_map50", "box_map50_95", "box_map50", "images"):
        assert isinstance(d[k], (int, float))
    assert d["images"] == 30
    assert d["fidelity_detections_kept"] > 0.9 and d["fidelity_mean_mask_iou"] > 0.95
    assert (rep / "report.md").is_file() and list(rep.glob("side_by_side_*.jpg"))
    text = (rep / "report.md").read_text()
    assert "per output role" in text and "| cls |" in text and "circle" in text


def test_dataset_without_labels_is_an_error(int8_bundle, tmp_path):
    import shutil

    from conftest import VAL_IMAGES

    (tmp_path / "images").mkdir()
    for f in sorted(VAL_IMAGES.iterdir())[:3]:
        shutil.copy(f, tmp_path / "images")
    y = tmp_path / "d.yaml"
    y.write_text("path: .\nval: images\nnames: {0: circle}\n")
    r = cli("eval", str(int8_bundle.path), "--data", str(y))
    assert r.returncode == 2 and "has a label file" in r.stderr


def test_dataset_classes_are_matched_to_the_model_by_name(fp32_model, tmp_path):
    """A dataset listing the model's classes in another order scores the same once its labels say
    the same thing; a dataset of other classes is refused instead of scored by id."""
    import shutil

    import yaml

    src = DATA_YAML.parent / "val"
    names = yaml.safe_load(DATA_YAML.read_text())["names"]
    order = [3, 0, 4, 1, 2]  # new id k holds old class order[k]
    new_id = {old: k for k, old in enumerate(order)}
    (tmp_path / "labels").mkdir()
    shutil.copytree(src / "images", tmp_path / "images")
    for lf in (src / "labels").glob("*.txt"):
        lines = [ln.split(maxsplit=1) for ln in lf.read_text().splitlines() if ln.strip()]
        (tmp_path / "labels" / lf.name).write_text("".join(f"{new_id[int(c)]} {rest}\n" for c, rest in lines))
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"path": str(tmp_path), "val": "images",
                                                     "names": {k: names[o] for k, o in enumerate(order)}}))
    a = evaluate(fp32_model, DATA_YAML, progress=False, limit=30)
    b = evaluate(fp32_model, tmp_path / "d.yaml", progress=False, limit=30)
    assert b["mask_map50_95"] == pytest.approx(a["mask_map50_95"], abs=1e-9)
    assert b["mask_ap_per_class"] == a["mask_ap_per_class"]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"path": str(tmp_path), "val": "images", "names": {0: "cat"}}))
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="not among the model's classes"):
        evaluate(fp32_model, tmp_path / "other.yaml", progress=False, limit=5)
