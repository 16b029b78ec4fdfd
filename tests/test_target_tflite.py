"""TFLite / Edge TPU: TensorFlow's converter in the isolated env edgeseg creates, the full-integer
model run by the real LiteRT interpreter (the int8 arithmetic the Edge TPU executes)."""

import json

import numpy as np
import pytest
from conftest import DATA_YAML, MODEL, MODEL_V8, VAL_IMAGES, agreement_on_aarch64

pytest.importorskip("ai_edge_litert", reason='the TFLite target needs: pip install "edgeseg[tflite]"')


@pytest.fixture(scope="module")
def tfl(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("tflite")
    return {"split": convert(MODEL, target="edgetpu", out=d / "int8", log=lambda m: None),
            "nosplit": convert(MODEL, target="tflite", out=d / "nosplit", split=False, log=lambda m: None),
            "fp16": convert(MODEL, target="tflite", precision="fp16", out=d / "fp16", log=lambda m: None)}


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


def test_full_integer_model_in_litert(tfl, fp32_bundle):
    b = tfl["split"]
    for o in b.manifest.outputs:  # int8 outputs, dequantized by edgeseg with these parameters
        assert o["quant"]["dtype"] == "int8" and o["quant"]["scale"] > 0
    assert b.manifest.input["quant"]["dtype"] == "int8"
    from conftest import VAL_IMAGES

    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    m = Model.load(b.path)
    x, _ = m.preprocess(read_image(VAL_IMAGES / "00000.jpg"))
    assert all(v.dtype == np.int8 for v in m.infer(x).values())
    assert _score(fp32_bundle.path) - _score(b.path) <= 0.015


def test_edgetpu_report_lists_every_op(tfl):
    b = tfl["split"]
    rep = json.loads((b.path / "edgetpu_report.json").read_text())
    assert rep["op_count"] == len(rep["ops"]) > 100
    assert all(isinstance(r["supported"], bool) and r["op"] for r in rep["ops"])
    # YOLO11's attention: BATCH_MATMUL is not an Edge TPU op, and its softmax runs over a 2-D map
    # (Coral's table: one axis only); everything after the first of them runs on the CPU
    assert rep["unsupported_ops"] == ["BATCH_MATMUL", "SOFTMAX"] and rep["split_at"]["op"] == "BATCH_MATMUL"
    verdicts = {}
    for r in rep["ops"]:
        verdicts.setdefault(r["op"], set()).add(r["supported"])
    assert verdicts == {**{op: {True} for op in (
        "ADD", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "LOGISTIC", "MAX_POOL_2D", "MUL", "PAD",
        "QUANTIZE", "RESHAPE", "RESIZE_NEAREST_NEIGHBOR", "SPLIT", "STRIDED_SLICE", "TRANSPOSE",
        "TRANSPOSE_CONV")}, "BATCH_MATMUL": {False}, "SOFTMAX": {False}}
    softmax = next(r for r in rep["ops"] if r["op"] == "SOFTMAX")
    assert "[1, 2, 100, 100]" in softmax["reason"] and "16,000" in softmax["reason"]
    assert 0.1 < rep["mapped_fraction"] < 0.6 and "YOLOv8" in rep["advice"][0]
    from edgeseg.convert.edgetpu import summary_lines

    screen = "\n".join(summary_lines(rep))
    assert "(BATCH_MATMUL at #" in screen and "SOFTMAX x1" in screen and "advice: YOLO11" in screen
    assert rep["compiler"]["compiled"] is False and "edgetpu_compiler" in rep["compiler"]["how"]
    assert b.manifest.quantization["edgetpu"]["split_at"]["op"] == "BATCH_MATMUL"


def test_yolov8_maps_whole_to_the_edgetpu_within_goal(tmp_path):
    """The reference YOLOv8n-seg, cut before its decode, passes every check of Coral's table (ops
    and per-op limits); its full-integer model in LiteRT stays within 0.015 of its FP32 bundle."""
    from edgeseg.convert import convert

    tpu = convert(MODEL_V8, target="edgetpu", out=tmp_path / "v8", log=lambda m: None)
    rep = json.loads((tpu.path / "edgetpu_report.json").read_text())
    assert rep["split_at"] is None and rep["unsupported_ops"] == [] and rep["advice"] == []
    assert rep["mapped_to_edgetpu"] == rep["op_count"] > 200 and all(r["edgetpu"] for r in rep["ops"])
    assert {"CONV_2D", "STRIDED_SLICE", "CONCATENATION", "PAD", "RESIZE_NEAREST_NEIGHBOR"} <= set(rep["op_types"])
    fp32 = convert(MODEL_V8, target="onnxruntime", precision="fp32", out=tmp_path / "v8fp32", log=lambda m: None)
    assert _score(fp32.path) - _score(tpu.path) <= 0.015


def test_unsplit_full_integer_model_detects_nothing(tfl):
    f = tfl["nosplit"].manifest.fidelity
    assert f["cosine"]["cls"] < 0.2
    assert _score(tfl["nosplit"].path) < 0.05


def test_fp16_tflite_matches_fp32(tfl, fp32_bundle):
    b = tfl["fp16"]
    assert all(o["quant"] is None for o in b.manifest.outputs) and "quant" not in b.manifest.input
    assert abs(_score(fp32_bundle.path) - _score(b.path)) <= 0.003


def test_edgetpu_delegate_is_used_when_libedgetpu_loads(tfl, tmp_path, monkeypatch, caplog):
    """This machine has no Coral and no edgetpu_compiler: only ``load_delegate`` (libedgetpu) and
    the compiled file are stood in for (a copy of the int8 model). The backend must load the
    compiled model with the delegate when libedgetpu loads, and the int8 model on CPU when not."""
    import shutil

    from edgeseg.bundle import Bundle, write_manifest
    from edgeseg.runtime.backends import litert
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    b = tmp_path / "compiled"
    shutil.copytree(tfl["split"].path, b)
    shutil.copyfile(b / "model.tflite", b / "model_edgetpu.tflite")
    m = Bundle.load(b, verify=False).manifest
    m.model_files = ["model.tflite", "model_edgetpu.tflite"]
    write_manifest(b, m)

    seen: dict = {}
    real = litert.Interpreter

    def fake_load_delegate(lib):
        seen["lib"] = lib
        return "edgetpu-delegate"

    def interpreter(model_path, num_threads=None, experimental_delegates=None):
        seen.update(model=model_path, delegates=experimental_delegates)
        return real(model_path=model_path, num_threads=num_threads)  # the delegate's ops run on the CPU here

    monkeypatch.setattr(litert, "load_delegate", fake_load_delegate)
    monkeypatch.setattr(litert, "Interpreter", interpreter)
    tpu = Model.load(b)
    assert tpu.backend.on_edgetpu and tpu.backend.name == "litert+edgetpu" and seen["lib"] == "libedgetpu.so.1" and seen["delegates"] == ["edgetpu-delegate"]
    assert not caplog.records
    assert seen["model"].endswith("model_edgetpu.tflite")
    frame = read_image(sorted(VAL_IMAGES.glob("*.jpg"))[0])
    with_tpu = tpu(frame)

    def no_coral(lib):
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    monkeypatch.setattr(litert, "load_delegate", no_coral)
    cpu = Model.load(b)
    assert not cpu.backend.on_edgetpu and cpu.backend.name == "litert" and seen["model"].endswith("model.tflite") and not seen["delegates"]
    # running ~10x slower on the CPU is never silent
    assert [r.getMessage() for r in caplog.records if "no Edge TPU found" in r.getMessage()], caplog.text
    caplog.clear()
    Model.load(tfl["split"].path).close()  # converted here, where no edgetpu_compiler is installed
    assert "holds no Edge TPU-compiled model" in caplog.text and "edgetpu_compiler" in caplog.text
    ref = cpu(frame)
    assert [i.class_id for i in with_tpu.instances] == [i.class_id for i in ref.instances] and ref.instances


def test_full_integer_bundle_on_a_pi_cpu_decodes_as_here(tfl, aarch64, tmp_path):
    """A Coral host without its stick (or before it is plugged in) runs the int8 model on LiteRT's
    ARM kernels (emulated Cortex-A76)."""
    a = agreement_on_aarch64(aarch64, tfl["split"].path, tmp_path)
    assert a["b"] > 20 and a["matched"] >= 0.9 * max(a["a"], a["b"]) and a["mean_iou"] > 0.95, a
