"""The label-free INT8 drop estimate and the ``--max-drop`` search (edgeseg/convert/accuracy.py).

The fast tests build a three-convolution model with one activation channel 300x wider than the
others (the way a real network's outlier channel ruins a per-tensor INT8 scale): only the layer
reading that activation is sensitive, so the search must find it, keep it alone in float, and
bring the model within the bound. The slow test runs the bound for real on the reference model.
"""

import json

import numpy as np
import pytest
from conftest import DATA_YAML, VAL_IMAGES, cli
from onnx import TensorProto, helper, numpy_helper, save

NAMES = "background,circle,rectangle,triangle,star,hexagon"  # the shapes dataset's classes, for --data


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    from edgeseg.runtime.replay import cache_root

    envs = cache_root() / "envs"  # the vendor toolchains' environments (GBs) are shared, not rebuilt per test
    envs.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))  # the layer ranking is cached there
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "envs").symlink_to(envs, target_is_directory=True)


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory):
    rng = np.random.default_rng(0)

    def w(shape):
        return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype("float32")

    wa, wc, wb = w((8, 3, 3, 3)), w((8, 8, 3, 3)), w((6, 8, 1, 1))
    wc[7] *= 300.0  # conv_c's channel 7 spans 300x the others' range...
    wb[:, 7] /= 300.0  # ...and conv_b weighs it like the others: one uint8 scale cannot hold both
    g = helper.make_graph(
        [helper.make_node("Conv", ["images", "wa"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv_a"),
         helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
         helper.make_node("Conv", ["ra", "wc"], ["c"], pads=[1, 1, 1, 1], name="conv_c"),
         helper.make_node("Relu", ["c"], ["rc"], name="relu_c"),
         helper.make_node("Conv", ["rc", "wb"], ["logits"], name="conv_b")],
        "outlier", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, 32, 32])],
        [numpy_helper.from_array(a, n) for a, n in ((wa, "wa"), (wc, "wc"), (wb, "wb"))])
    path = tmp_path_factory.mktemp("outlier") / "outlier.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _convert(model, out, **kw):
    from edgeseg.convert import convert

    lines: list[str] = []
    b = convert(model, target=kw.pop("target", "onnxruntime"), precision=kw.pop("precision", "int8"),
                head="semantic", names=NAMES, calib_images=16, out=out, log=lines.append, **kw)
    return b, lines


def _disagreement(bundle, reference, n=12) -> float:
    """1 - mIoU of ``bundle``'s label maps against ``reference``'s on val images: images neither
    the calibration nor the search's estimate saw."""
    import cv2

    from edgeseg.convert.accuracy import _miou
    from edgeseg.runtime.model import Model

    a, b = Model.load(bundle.path), Model.load(reference.path)
    frames = [cv2.imread(str(p)) for p in sorted(VAL_IMAGES.glob("*.jpg"))[:n]]
    return 1.0 - float(np.mean([_miou(b(f).label_map, a(f).label_map, 6) for f in frames]))


def test_estimate_reported_without_max_drop(outlier_model, tmp_path):
    b, lines = _convert(outlier_model, tmp_path / "plain", data=DATA_YAML)
    est = b.manifest.quantization["accuracy"]["estimate"]
    # with labels, the measured drop beside the estimate
    assert b.manifest.quantization["accuracy"]["measured"]["metric"] == "miou"
    assert any("; measured on shapes.yaml:" in ln for ln in lines), lines
    assert est["images"] > 0 and est["views"] == 3 * est["images"]
    assert est["estimated_drop"] > 0.02  # the outlier channel costs this model a lot: the user sees it at once
    assert any(ln.startswith("label-free estimate: about") for ln in lines), lines
    assert "max_drop" not in b.manifest.quantization
    assert b.manifest.quantization["kept_float"] == []


@pytest.mark.slow  # a --max-drop search (several quantizations)
def test_max_drop_keeps_the_sensitive_layer_in_float(outlier_model, tmp_path):
    bound = 0.02
    b, lines = _convert(outlier_model, tmp_path / "bounded", max_drop=bound)  # no labels: the estimate decides
    q = b.manifest.quantization
    md = q["max_drop"]
    assert md["attempts"][0]["estimated_drop"] > bound  # plain INT8 misses the bound: the search had work to do
    assert md["met"] and md["estimated_drop"] <= bound
    # ranked by measurement: conv_b reads the outlier activation, the other two layers do not
    top = md["sensitivity_top"]
    assert top[0]["layer"] == "conv_b" and top[0]["sensitivity"] > 10 * top[1]["sensitivity"], top
    assert list((tmp_path / "cache" / "sensitivity").glob("*.json"))  # kept for the next target or run
    # the fewest layers: conv_b alone, and the model really runs it on float inputs
    assert [k["layer"] for k in md["layers_kept_float"]] == ["conv_b"]
    assert q["kept_float"] == ["conv_b"]
    import onnx

    m = onnx.load(str(b.path / "model.onnx"))
    conv_b = next(n for n in m.graph.node if n.name == "conv_b")
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in conv_b.input), list(conv_b.input)
    assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)  # the rest stays INT8
    # the report: the latency cost, the search time
    assert md["decided_by"] == "the label-free estimate"
    assert md["latency"]["inference_ms"] > 0 and md["search_seconds"] > 0
    assert any(ln.startswith(f"--max-drop {bound}: met") for ln in lines), lines
    r = cli("eval", str(b.path), "--data", str(DATA_YAML), "--limit", "4", "--report", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"--max-drop {bound}: met" in report and "| conv_b |" in report, report
    # the bound holds on images the search never saw, and the plain model would not have held it
    fp32, _ = _convert(outlier_model, tmp_path / "fp32", precision="fp32")
    plain, _ = _convert(outlier_model, tmp_path / "plain")
    assert _disagreement(b, fp32) < _disagreement(plain, fp32) / 3


@pytest.mark.toolchain
def test_max_drop_on_ncnn_keeps_the_onnx_ranked_layer_float_in_ncnn(outlier_model, tmp_path):
    """The bound for real on a vendor target: pnnx renames every layer, so the layer ranked by its
    ONNX name must be found in the ncnn model (by its weights) and left out of the int8 rewrite, and
    the estimate runs the real ncnn runtime."""
    pytest.importorskip("ncnn", reason='the NCNN target needs: pip install "edgeseg[ncnn-host]"')
    from edgeseg.convert.toolchains.ncnn.int8 import read_param

    bound = 0.02
    b, lines = _convert(outlier_model, tmp_path / "bounded", target="ncnn", max_drop=bound)
    q = b.manifest.quantization
    md = q["max_drop"]
    assert md["attempts"][0]["estimated_drop"] > bound  # plain ncnn INT8 misses the bound
    assert md["met"] and md["estimated_drop"] <= bound
    kept = [k["layer"] for k in md["layers_kept_float"]]
    # the search converts 2, 4, 8... layers in float (NCNN cannot predict without converting): conv_b first
    assert kept[0] == "conv_b" and len(kept) <= 2, kept
    layers, _ = read_param(b.path / "model.ncnn.param")
    convs = {l.name: l.p(8) for l in layers if l.type == "Convolution"}
    # the kept layers under their ncnn names are float (no int8 scale term); conv_a stays int8
    assert sorted(q["kept_float"]) == sorted(n for n, s in convs.items() if not s), convs
    assert len(q["kept_float"]) == len(kept) and sum(1 for s in convs.values() if s) == 3 - len(kept), convs
    assert any(ln.startswith(f"--max-drop {bound}: met") for ln in lines), lines
    # on val images neither calibration nor the estimate saw, against the FP32 model
    fp32, _ = _convert(outlier_model, tmp_path / "fp32", precision="fp32")
    plain, _ = _convert(outlier_model, tmp_path / "plain", target="ncnn")
    # measured 0.08 against 0.17: conv_a's int8 error stays (ncnn's symmetric scales on a random model)
    assert _disagreement(b, fp32) < _disagreement(plain, fp32) / 1.5


def test_max_drop_with_labels_goes_by_the_labels(outlier_model, tmp_path):
    """Given labels (--data), each attempt is measured on them and the bound is checked there: the
    label-free estimate can be off by ~0.003 (README: OpenVINO YOLOv8n-seg)."""
    b, lines = _convert(outlier_model, tmp_path / "labeled", max_drop=0.02, data=DATA_YAML)
    q = b.manifest.quantization
    md = q["max_drop"]
    assert md["decided_by"] == "the labels given (--data)"
    assert all("measured_drop" in a and "estimated_drop" in a for a in md["attempts"]), md["attempts"]
    chosen = next(a for a in md["attempts"] if a["label"] == md["chosen"]
                  and a["layers_kept_float"] == len(md["layers_kept_float"]))
    # the verdict follows the measured drop, which the report repeats for the bundle written
    assert md["met"] == (chosen["measured_drop"] <= 0.02)
    assert q["accuracy"]["measured"]["drop"] == pytest.approx(chosen["measured_drop"], abs=1e-4)
    assert any("-> measured drop" in ln for ln in lines), lines


def test_ncnn_table_loses_the_kept_layers_only(tmp_path):
    """ncnn2int8 quantizes what the table names: a layer kept float loses its weight and input scales."""
    from edgeseg.convert.toolchains.ncnn.mixed import drop_from_table

    t = tmp_path / "model.table"
    t.write_text("conv_1_param_0 12.5 13.0\nconv_10_param_0 9.0\nconv_1 40.2\nconv_10 33.1\n")
    assert drop_from_table(t, ["conv_1"]) == 2
    assert t.read_text() == "conv_10_param_0 9.0\nconv_10 33.1\n"


def test_search_budget_is_the_targets_own_plain_conversion_times_three(tmp_path, monkeypatch):
    """A target slower than the caller's overall budget still gets 3x its plain conversion: the
    second calibration choice is tried after a first conversion longer than that budget."""
    import time
    from types import SimpleNamespace

    from edgeseg.convert import accuracy

    monkeypatch.setitem(accuracy.PLANS, "slow", accuracy.Plan([("a", {}), ("b", {"x": 1})]))
    tried = []

    def attempt(folder, opts):
        tried.append(opts["set"])
        time.sleep(0.3)

    est = SimpleNamespace(estimate_bundle=lambda folder, tc: {"estimated_drop": 0.01 if len(tried) == 1 else 0.001})
    s = accuracy.Search(SimpleNamespace(name="slow"), est, 0.005, tmp_path, attempt, None, tmp_path / "m.onnx",
                        log=lambda m: None, budget_s=0.2)
    chosen = s.run()
    assert tried == [{}, {"x": 1}] and chosen.label == "b" and chosen.drop <= 0.005


def test_search_converts_the_ranked_layers_once_even_past_its_budget(tmp_path, monkeypatch):
    """The ranking (ONNX Runtime's, cached) can take longer than 3x a fast target's conversion: the
    search still converts its first float attempt, what the ranking was paid for, then stops."""
    from types import SimpleNamespace

    from edgeseg.convert import accuracy

    monkeypatch.setitem(accuracy.PLANS, "fast", accuracy.Plan([("a", {})], keep_float=list, budget_x=None))
    tried = []
    est = SimpleNamespace(estimate_bundle=lambda folder, tc: {"estimated_drop": 0.01})
    s = accuracy.Search(SimpleNamespace(name="fast"), est, 0.005, tmp_path, lambda f, o: tried.append(o),
                        None, tmp_path / "m.onnx", log=lambda m: None)

    def rank(base):
        s.budget_s = 0.0  # the ranking used the whole budget
        return [("l1", 1.0), ("l2", 0.5), ("l3", 0.1)]

    s._rank = rank
    chosen = s.run()
    assert [o.get("keep_float", []) for o in tried] == [[], ["l1", "l2"]]  # one float attempt, the top two
    assert chosen.drop == 0.01


def test_integer_only_target_reports_bound_not_met(outlier_model, tmp_path, monkeypatch):
    """The contract for targets that cannot keep a layer in float (Edge TPU, IMX500), exercised on
    ONNX Runtime with its float mechanism withheld: calibration choices only, the best kept, the
    bundle written and marked."""
    from edgeseg.convert import accuracy

    monkeypatch.setitem(accuracy.PLANS, "onnxruntime", accuracy.Plan([("MinMax", {}), ("Percentile", {
        "calibration_method": "percentile"})]))
    b, lines = _convert(outlier_model, tmp_path / "int_only", max_drop=0.001)
    md = b.manifest.quantization["max_drop"]
    assert md["met"] is False and md["layers_kept_float"] == []
    assert md["estimated_drop"] == min(a["estimated_drop"] for a in md["attempts"])  # the best one is written
    assert "integer only" in md["note"]
    assert any(ln.startswith("warning:") and "max_drop.met=false" in ln for ln in lines), lines


def test_max_drop_refused_for_float_precisions(outlier_model, tmp_path):
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="--max-drop"):
        _convert(outlier_model, tmp_path / "x", precision="fp16", max_drop=0.01)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_max_drop_on_the_reference_model_holds_on_labeled_scenes(tmp_path):
    """The reference YOLO11n-seg loses 0.0067 mask mAP50-95 in plain ORT INT8; with --max-drop
    0.005 and no labels the bundle must be within 0.005 of FP32 on the labeled scenes."""
    out = tmp_path / "bounded"
    r = cli("convert", "--target", "onnxruntime", "--max-drop", "0.005", "--out", str(out), timeout=1800)
    assert r.returncode == 0, r.stderr
    assert "--max-drop 0.005: met" in r.stderr
    md = json.loads((out / "edgeseg.json").read_text())["quantization"]["max_drop"]
    assert md["met"] and md["estimated_drop"] <= 0.005
    fp = tmp_path / "fp32"
    assert cli("convert", "--fp32", "--out", str(fp)).returncode == 0
    scores = {}
    for b in (out, fp):
        r = cli("eval", str(b), "--data", str(DATA_YAML), "--json", str(tmp_path / f"{b.name}.json"))
        assert r.returncode == 0, r.stderr
        scores[b.name] = json.loads((tmp_path / f"{b.name}.json").read_text())["mask_map50_95"]
    assert scores["fp32"] - scores["bounded"] <= 0.005, scores


def test_a_replay_without_the_views_is_not_estimated(outlier_model, tmp_path):
    """RKNN and IMX500 run their simulator only at build time: convert hands it the estimate's views.
    A replay that lacks them (a bundle converted before) says "not measured" instead of failing."""
    from edgeseg.convert.accuracy import DropEstimator
    from edgeseg.convert.calibration import CalibrationSet
    from edgeseg.convert.toolchains import load_toolchain
    from edgeseg.defaults import DEFAULT_CALIB
    from edgeseg.runtime.replay import Replay

    b, _ = _convert(outlier_model, tmp_path / "plain")
    m = b.manifest
    est = DropEstimator(b.path / "model.onnx", m.head, m.outputs, m.names, m.input_hw,
                        CalibrationSet.from_path(DEFAULT_CALIB, 16).holdout[:2])
    assert est.estimate_bundle(b.path, load_toolchain("onnxruntime"))["estimated_drop"] is not None

    class NothingRecorded:
        def host_runner(self, bundle_dir):
            return Replay("0" * 64)

    assert est.estimate_bundle(b.path, NothingRecorded()) is None
    assert len(est.view_files(tmp_path / "views")) == len(est.frames) == 6  # what a simulator is handed


def test_edgetpu_searches_calibration_only_where_tflite_keeps_layers_float():
    """Both targets share the tflite toolchain; only the CPU one can run a float layer."""
    from edgeseg.convert.accuracy import Search
    from edgeseg.convert.toolchains import load_toolchain

    tc = load_toolchain("tflite")

    def plan(target):
        return Search(tc, None, 0.005, None, None, None, None, target=target).plan

    assert plan("edgetpu").keep_float is None and plan("tflite").keep_float is not None
    assert plan("imx500").keep_float is None and plan("rknn").keep_float is not None


def _vendor_bounded(outlier_model, tmp_path, target, **kw):
    bound = 0.02
    b, lines = _convert(outlier_model, tmp_path / target, target=target, max_drop=bound, **kw)
    q = b.manifest.quantization
    md = q["max_drop"]
    assert md["attempts"][0]["estimated_drop"] > bound, md["attempts"]  # plain INT8 misses it: work to do
    assert md["met"] and md["estimated_drop"] <= bound, md
    kept = [k["layer"] for k in md["layers_kept_float"]]
    assert kept[0] == "conv_b" and len(kept) <= 2, kept  # the sensitive layer first; converted with 2 at first
    assert any(ln.startswith(f"--max-drop {bound}: met") for ln in lines), lines
    return b, q


@pytest.mark.toolchain
@pytest.mark.slow
def test_rknn_search_keeps_the_sensitive_layer_in_fp16(outlier_model, tmp_path):
    """RKNN's hybrid quantization from the search: conv_b, which reads the outlier activation, becomes
    a float16 subgraph; every estimate is scored on the simulator's outputs for the held-back views."""
    b, q = _vendor_bounded(outlier_model, tmp_path, "rknn")
    # conv_b's float16 subgraph starts at conv_c's input: conv_b then reads the outlier activation in float
    assert ["ra", "logits"] in q["hybrid"] and "conv_b" in q["kept_float"]
    assert "not measured" in q["max_drop"]["latency"]["note"]  # no NPU here: a replay's speed means nothing


@pytest.mark.toolchain
@pytest.mark.slow
def test_tflite_search_keeps_the_sensitive_layer_in_float(outlier_model, tmp_path):
    """TFLite float fallback: onnx2tf renames the layers, found again by their weights."""
    b, q = _vendor_bounded(outlier_model, tmp_path, "tflite")
    assert "conv_b" in q["kept_float"] and "float fallback" in q["scheme"]
    assert q["max_drop"]["latency"]["inference_ms"] > 0  # LiteRT runs here: the cost is measured
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(b.path / "model.tflite"))
    t = {d["index"]: d for d in it.get_tensor_details()}
    conv_b = next(op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"
                  and tuple(t[op["inputs"][1]]["shape"]) == (6, 1, 1, 8))
    # conv_b reads the outlier activation in float (its feeder stays float too); the rest of the model is int8
    assert np.dtype(t[conv_b["inputs"][0]]["dtype"]) == np.float32
    assert any(np.dtype(d["dtype"]) == np.int8 for d in t.values())
