"""TFLite / Edge TPU: TensorFlow's converter in the isolated env edgeseg creates, the full-integer
model run by the real LiteRT interpreter (the int8 arithmetic the Edge TPU executes)."""

import json

import numpy as np
import pytest

from conftest import DATA_YAML, MODEL, VAL_IMAGES

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
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image
    from conftest import VAL_IMAGES

    m = Model.load(b.path)
    x, _ = m.preprocess(read_image(VAL_IMAGES / "00000.jpg"))
    assert all(v.dtype == np.int8 for v in m.infer(x).values())
    assert _score(fp32_bundle.path) - _score(b.path) <= 0.015


def test_edgetpu_report_lists_every_op(tfl):
    b = tfl["split"]
    rep = json.loads((b.path / "edgetpu_report.json").read_text())
    assert rep["op_count"] == len(rep["ops"]) > 100
    assert all(isinstance(r["supported"], bool) and r["op"] for r in rep["ops"])
    # YOLO11's attention: BATCH_MATMUL is not an Edge TPU op; everything after it runs on the CPU
    assert rep["unsupported_ops"] == ["BATCH_MATMUL"] and rep["split_at"]["op"] == "BATCH_MATMUL"
    assert 0.1 < rep["mapped_fraction"] < 0.6 and "YOLOv8" in rep["advice"][0]
    assert rep["compiler"]["compiled"] is False and "edgetpu_compiler" in rep["compiler"]["how"]
    assert b.manifest.quantization["edgetpu"]["split_at"]["op"] == "BATCH_MATMUL"


def test_unsplit_full_integer_model_detects_nothing(tfl):
    f = tfl["nosplit"].manifest.fidelity
    assert f["cosine"]["cls"] < 0.2
    assert _score(tfl["nosplit"].path) < 0.05


def test_fp16_tflite_matches_fp32(tfl, fp32_bundle):
    b = tfl["fp16"]
    assert all(o["quant"] is None for o in b.manifest.outputs) and "quant" not in b.manifest.input
    assert abs(_score(fp32_bundle.path) - _score(b.path)) <= 0.003


def test_edgetpu_delegate_is_used_when_libedgetpu_loads(tfl, tmp_path, monkeypatch):
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
    assert tpu.backend.on_edgetpu and seen["lib"] == "libedgetpu.so.1" and seen["delegates"] == ["edgetpu-delegate"]
    assert seen["model"].endswith("model_edgetpu.tflite")
    frame = read_image(sorted(VAL_IMAGES.glob("*.jpg"))[0])
    with_tpu = tpu(frame)

    def no_coral(lib):
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    monkeypatch.setattr(litert, "load_delegate", no_coral)
    cpu = Model.load(b)
    assert not cpu.backend.on_edgetpu and seen["model"].endswith("model.tflite") and not seen["delegates"]
    ref = cpu(frame)
    assert [i.class_id for i in with_tpu.instances] == [i.class_id for i in ref.instances] and ref.instances
