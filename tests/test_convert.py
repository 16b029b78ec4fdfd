import json

import numpy as np
import onnx
import pytest
from conftest import MODEL

from edgeseg.bundle import MANIFEST, Bundle
from edgeseg.errors import EdgesegError


def test_int8_bundle_manifest(int8_bundle):
    m = int8_bundle.manifest
    assert m.target == "onnxruntime" and m.precision == "int8" and m.runtime == "onnxruntime"
    assert m.head["layout"] == "split" and m.head["num_classes"] == 5
    assert m.names == ["circle", "rectangle", "triangle", "star", "hexagon"]
    assert m.input["height"] == m.input["width"] == 320 and m.input["letterbox"]["pad_value"] == 114
    roles = {o["role"] for o in m.outputs}
    assert roles == {"box_dfl", "cls_logits", "coef", "protos"}
    # every output carries its own INT8 scale: that is the point of splitting
    scales = [o["qdq"]["scale"] for o in m.outputs]
    assert len(set(scales)) == len(scales)
    assert m.quantization["calibration"]["used"] == 56 and m.quantization["calibration"]["holdout"] == 8
    assert len(m.source["sha256"]) == 64
    f = m.fidelity
    assert f["cosine"]["cls"] > 0.98 and f["detections_kept"] > 0.9 and f["mean_mask_iou"] > 0.95
    # the model really is quantized
    ops = {n.op_type for n in onnx.load(str(int8_bundle.path / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.slow  # one more INT8 conversion, for comparison only
def test_unsplit_int8_loses_the_class_scores(int8_nosplit_bundle):
    f = int8_nosplit_bundle.manifest.fidelity
    assert f["cosine"]["cls"] < 0.5 and f["detections_kept"] < 0.2
    assert f["cosine"]["box"] > 0.99  # the whole-tensor view would have looked fine


def test_tampered_bundle_is_refused(int8_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(int8_bundle.path, b)
    with open(b / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(EdgesegError, match="SHA-256 does not match"):
        Bundle.load(b)


def test_manifest_path_escape_is_refused(int8_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(int8_bundle.path, b)
    d = json.loads((b / MANIFEST).read_text())
    d["files"]["../outside.onnx"] = "0" * 64
    (b / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(EdgesegError, match="outside the bundle"):
        Bundle.load(b)


def test_reconverting_replaces_the_bundle_atomically(tmp_path):
    from edgeseg.convert import convert

    out = tmp_path / "b"
    convert(MODEL, precision="fp32", out=out, log=lambda m: None, fidelity=False)
    first = (out / MANIFEST).read_text()
    with pytest.raises(EdgesegError, match="already exists; pass --force"):  # never silently
        convert(MODEL, precision="fp16", out=out, log=lambda m: None, fidelity=False)
    convert(MODEL, precision="fp16", out=out, log=lambda m: None, fidelity=False, force=True)
    assert json.loads((out / MANIFEST).read_text())["precision"] == "fp16" and first != (out / MANIFEST).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary or old folders left


@pytest.mark.slow  # one more conversion (FP16)
def test_fp16_bundle_runs_and_agrees(tmp_path, fp32_model):
    from conftest import VAL_IMAGES

    from edgeseg.convert import convert
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    b = convert(MODEL, precision="fp16", out=tmp_path / "fp16", log=lambda m: None)
    assert b.manifest.fidelity["cosine"]["cls"] > 0.999
    m = Model.load(b.path)
    frame = read_image(VAL_IMAGES / "00001.jpg")
    a, c = fp32_model(frame), m(frame)
    assert [i.class_id for i in a.instances] == [i.class_id for i in c.instances]
    np.testing.assert_allclose([i.box for i in a.instances], [i.box for i in c.instances], atol=1.0)


def test_model_with_weights_in_a_separate_file(tmp_path, fp32_model):
    """Large exports keep weights beside the graph (model.onnx + model.onnx.data): same bundle."""
    from conftest import VAL_IMAGES

    from edgeseg.convert import convert
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    src = tmp_path / "export"
    src.mkdir()
    onnx.save(onnx.load(str(MODEL)), str(src / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    assert (src / "model.onnx").stat().st_size < MODEL.stat().st_size / 10  # the weights really moved
    b = convert(src / "model.onnx", precision="fp32", out=tmp_path / "b", log=lambda m: None, fidelity=False)
    frame = read_image(VAL_IMAGES / "00001.jpg")
    a, c = fp32_model(frame), Model.load(b.path)(frame)
    assert [i.class_id for i in a.instances] == [i.class_id for i in c.instances] and a.instances
    np.testing.assert_allclose([i.box for i in a.instances], [i.box for i in c.instances], atol=1e-3)


@pytest.mark.slow  # an INT8 conversion calibrated from a video
def test_calibration_from_a_recording(tmp_path):
    """--calib video.mp4: evenly spaced frames of a deployment recording, through the same sampling."""
    import cv2
    from conftest import ASSETS

    from edgeseg.convert import convert
    from edgeseg.convert.calibration import CalibrationSet

    video = tmp_path / "recording.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (480, 320))
    for f in sorted((ASSETS / "shapes" / "calib" / "images").iterdir())[:40]:
        w.write(cv2.resize(cv2.imread(str(f)), (480, 320)))
    w.release()
    cal = CalibrationSet.from_path(video, n=16, holdout=4)
    assert (len(cal.images), len(cal.holdout), cal.available) == (16, 4, 20)
    frames = sorted(int(p.stem.rsplit("_", 1)[1]) for p in cal.images + cal.holdout)
    assert frames[0] == 0 and frames[-1] == 39  # spread over the whole recording
    folder = cal.images[0].parent
    del cal
    assert not folder.exists()  # the extracted frames go with the set
    # calibration/sample_frames.py keeps such frames as a folder, through the same reader
    import runpy

    sample = runpy.run_path(str(ASSETS.parent.parent / "calibration" / "sample_frames.py"))["sample"]
    assert sample(video, tmp_path / "kept", every_s=1.0) == 4 == len(list((tmp_path / "kept").glob("*.png")))
    b = convert(MODEL, precision="int8", calib=video, calib_images=32, out=tmp_path / "b", log=lambda m: None)
    c = b.manifest.quantization["calibration"]
    assert c["source"] == str(video) and c["used"] == 32 and c["holdout"] == 8
    assert b.manifest.fidelity["detections_kept"] > 0.9
