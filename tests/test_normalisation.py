"""The input normalisation a model declares (edgeseg/convert/normalisation.py): ONNX metadata keys,
transformers' preprocessor_config.json, their precedence under the flags, and bad values refused
in one line."""

import json

import numpy as np
import pytest
from conftest import cli
from onnx import TensorProto, helper, numpy_helper, save

from edgeseg.convert.normalisation import from_metadata, from_preprocessor_config, model_normalisation
from edgeseg.errors import EdgesegError


def test_onnx_metadata_keys():
    assert from_metadata({"Image.NominalPixelRange": "Normalized_1_1", "Image.BitmapPixelFormat": "Bgr8"}, "m") == \
        {"mean": (127.5,) * 3, "std": (127.5,) * 3, "color": "bgr"}
    # edgeseg's own keys win over ONNX's standard ones
    got = from_metadata({"Image.NominalPixelRange": "Normalized_0_1", "edgeseg.input.mean": "123.675,116.28,103.53",
                         "edgeseg.input.std": "58.395, 57.12, 57.375", "edgeseg.input.resize": "Stretch"}, "m")
    assert got == {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375), "resize": "stretch"}
    assert from_metadata({"names": "{0: 'a'}", "stride": "32"}, "m") == {}  # an Ultralytics export declares none
    for bad in ({"edgeseg.input.mean": "1,2"}, {"edgeseg.input.color": "gray"}):
        with pytest.raises(EdgesegError, match="^m: "):
            from_metadata(bad, "m")


def test_transformers_preprocessor_config(tmp_path):
    p = tmp_path / "preprocessor_config.json"
    p.write_text(json.dumps({"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                             "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_resize": True,
                             "size": {"height": 512, "width": 512}}))
    got = from_preprocessor_config(p)
    assert got["mean"] == pytest.approx((127.5,) * 3) and got["std"] == pytest.approx((63.75,) * 3)
    assert got["resize"] == "stretch" and got["size"] == (512, 512)
    # no rescale: the mean and std are already pixel units; a shortest-edge resize keeps the aspect ratio
    p.write_text(json.dumps({"do_rescale": False, "image_mean": 100, "image_std": 50, "size": {"shortest_edge": 9}}))
    assert from_preprocessor_config(p) == {"mean": (100.0,) * 3, "std": (50.0,) * 3}
    p.write_text("[1, 2]")
    with pytest.raises(EdgesegError, match="not a transformers preprocessor config"):
        from_preprocessor_config(p)


def test_precedence_explicit_config_over_metadata_over_config_beside(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    meta = {"edgeseg.input.std": "10"}
    got = model_normalisation(tmp_path / "m.onnx", meta, None)
    assert got["fields"]["std"] == (10.0,) * 3 and got["from"]["std"] == "the ONNX metadata"
    assert got["from"]["mean"] == "preprocessor_config.json beside the model"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"image_mean": [0.0] * 3, "image_std": [1.0] * 3}))
    got = model_normalisation(tmp_path / "m.onnx", meta, other)  # the config beside is no longer read
    assert got["from"] == {"mean": "--preprocessor other.json", "std": "--preprocessor other.json"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 3, 1, 1)).astype("float32"), "w")
    g = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["logits"])], "tiny",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 48])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 48])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(m, {"Image.NominalPixelRange": "Normalized_1_1"})
    d = tmp_path_factory.mktemp("tiny")
    save(m, str(d / "tiny.onnx"))
    return d / "tiny.onnx"


def test_flags_override_the_model_field_by_field(tiny, tmp_path):
    from edgeseg.convert import convert

    lines: list[str] = []
    b = convert(tiny, precision="fp32", head="semantic", out=tmp_path / "b", fidelity=False, log=lines.append,
                std=[64.0])
    inp = b.manifest.input
    assert inp["mean"] == pytest.approx([0.5] * 3) and inp["std"] == pytest.approx([64 / 255] * 3)
    assert inp["normalisation_from"] == {"mean": "the ONNX metadata", "std": "--std"}
    assert any(ln.startswith("input normalisation: mean 127.5,127.5,127.5 std 64,64,64") and "std from --std" in ln
               for ln in lines), lines


def test_bad_preprocessor_config_is_one_line(tiny, tmp_path):
    bad = tmp_path / "preprocessor_config.json"
    bad.write_text("{not json")
    r = cli("convert", str(tiny), "--fp32", "--head", "semantic", "--preprocessor", str(bad),
            "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {bad}: not a transformers preprocessor config"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
