"""The input spec is one schema: what convert writes to the manifest is what preprocessing does.

A model that takes ImageNet-normalised input (the reference model with ``x * std + mean`` put in
front) converted with ``--mean/--std`` must give the same outputs as the reference model converted
plainly: only if preprocessing really subtracts and divides. Calibration reads the same spec.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import MODEL, VAL_IMAGES, cli
from onnx import helper, numpy_helper

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
MEAN_PX, STD_PX = "123.675,116.28,103.53", "58.395,57.12,57.375"


def _normalised_input_model(path):
    """The reference model behind ``x = y * std + mean``: it takes y = (pixel/255 - mean) / std."""
    m = onnx.load(str(MODEL))
    g = m.graph
    old = g.input[0]
    new = helper.make_tensor_value_info("images_imagenet", old.type.tensor_type.elem_type,
                                        [d.dim_value or d.dim_param for d in old.type.tensor_type.shape.dim])
    g.initializer.extend([numpy_helper.from_array(STD.reshape(1, 3, 1, 1), "in_std"),
                          numpy_helper.from_array(MEAN.reshape(1, 3, 1, 1), "in_mean")])
    nodes = [helper.make_node("Mul", ["images_imagenet", "in_std"], ["in_scaled"]),
             helper.make_node("Add", ["in_scaled", "in_mean"], [old.name])]
    for n in reversed(nodes):
        g.node.insert(0, n)
    g.input.remove(old)
    g.input.insert(0, new)
    onnx.save(m, str(path))


def test_preprocess_honours_every_field():
    from edgeseg.runtime.preprocess import InputSpec, preprocess

    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    plain, lb = preprocess(frame, (64, 64))
    assert lb.pad_y > 0 and np.allclose(plain[0, :, 0, 0], 114 / 255)  # the default letterbox band
    spec = InputSpec(64, 64, mean=tuple(MEAN), std=tuple(STD), pad_value=0)
    x, _ = preprocess(frame, spec)
    assert np.allclose(x[0, :, 0, 0], -MEAN / STD, atol=1e-5)  # pad 0, then normalised
    core = slice(lb.pad_y + 1, 64 - lb.pad_y - 1)
    assert np.allclose(x[0, :, core] * STD[:, None, None] + MEAN[:, None, None], plain[0, :, core], atol=1e-5)
    bgr, _ = preprocess(frame, InputSpec(64, 64, color="bgr"))
    assert np.array_equal(bgr[0, ::-1], plain[0])
    nhwc, _ = preprocess(frame, spec, layout="nhwc")
    assert np.array_equal(nhwc[0].transpose(2, 0, 1), x[0])
    st, slb = preprocess(frame, InputSpec(64, 64, resize="stretch"))
    assert (slb.pad_x, slb.pad_y, slb.scale_x, slb.scale_y) == (0, 0, 64 / 320, 64 / 240)
    assert not np.allclose(st[0, :, 0, 0], 114 / 255)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="resize is letterbox or stretch"):
        InputSpec(64, 64, resize="crop")


@pytest.mark.slow  # three conversions
def test_a_mean_std_model_converted_with_mean_std_matches_the_plain_model(tmp_path):
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.sources import read_image

    norm = tmp_path / "imagenet.onnx"
    _normalised_input_model(norm)
    for name, args in (("plain", [str(MODEL)]), ("norm", [str(norm), "--mean", MEAN_PX, "--std", STD_PX]),
                       ("wrong", [str(norm)])):
        r = cli("convert", *args, "--target", "onnxruntime", "--fp32", "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "norm" / "edgeseg.json").read_text())["input"]
    assert np.allclose(man["mean"], MEAN, atol=1e-6) and np.allclose(man["std"], STD, atol=1e-6)
    assert man["resize"] == "letterbox" and man["pad_value"] == 114

    frame = read_image(sorted(VAL_IMAGES.iterdir())[0])
    outs = {}
    for name in ("plain", "norm", "wrong"):
        m = Model.load(tmp_path / name)
        outs[name] = m.infer(m.preprocess(frame)[0])
        m.close()
    for k, v in outs["plain"].items():
        assert np.allclose(outs["norm"][k], v, atol=1e-3), k
    assert any(not np.allclose(outs["wrong"][k], v, atol=1e-2) for k, v in outs["plain"].items())


@pytest.mark.slow  # an INT8 conversion
def test_calibration_uses_the_same_spec(tmp_path):
    """INT8 of the normalised-input model: its calibration arrays went through the same spec, so
    it follows its FP32 source as closely as the plain model's INT8 does."""
    norm = tmp_path / "imagenet.onnx"
    _normalised_input_model(norm)
    r = cli("convert", str(norm), "--mean", MEAN_PX, "--std", STD_PX, "--target", "onnxruntime", "--int8",
            "--calib-images", "16", "--out", str(tmp_path / "int8"))
    assert r.returncode == 0, r.stderr
    f = json.loads((tmp_path / "int8" / "edgeseg.json").read_text())["fidelity"]
    assert min(f["cosine"].values()) > 0.98, f["cosine"]


def test_bad_mean_std_resize_fail_before_any_work(tmp_path):
    for args, why in ((["--mean", "1,2"], "--mean 1,2: expected 1 or 3 values"),
                      (["--std", "0,1,1"], "above 0"),
                      (["--mean", "x"], "--mean x: expected numbers"),
                      (["--resize", "crop"], "resize is letterbox or stretch")):
        r = cli("convert", "--target", "onnxruntime", *args, "--out", str(tmp_path / "b"), timeout=60)
        assert r.returncode == 2 and why in r.stderr, r.stderr
        assert not (tmp_path / "b").exists()


@pytest.mark.slow  # a conversion
def test_stretch_is_recorded_and_used(tmp_path):
    from edgeseg.runtime.model import Model

    r = cli("convert", "--target", "onnxruntime", "--fp32", "--resize", "stretch", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    with Model.load(tmp_path / "s") as m:
        assert m.manifest.input["resize"] == "stretch" and m.manifest.input["letterbox"] is None
        _, lb = m.preprocess(np.zeros((240, 320, 3), np.uint8))
        assert (lb.pad_x, lb.pad_y) == (0, 0) and lb.scale_x != lb.scale_y
