"""A semantic-segmentation model through every INT8 target that installs here: ReLU convolutions,
a bilinear upsample and a skip concat (the shape of a small U-Net), which the YOLO-seg reference
model does not exercise. Found this way: MNN's converter silently left ReLU networks in float, the
IMX500 path refused bilinear Resize, and pnnx refused the IR version onnx >= 1.20 writes (this
test's model is saved with it)."""

import numpy as np
import pytest
from conftest import VAL_IMAGES
from onnx import TensorProto, helper, numpy_helper, save

# drives every INT8 toolchain that installs here: `make test-fast` leaves it out
pytestmark = pytest.mark.toolchain

TARGETS = ["openvino", "mnn", "ncnn", "tflite", "rknn", "imx500"]
# runtimes that run on this machine (the others are checked by their simulator's fidelity figures)
RUNS_HERE = {"openvino", "mnn", "ncnn", "tflite"}


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    rng = np.random.default_rng(0)
    w = {"w1": (8, 3, 3, 3), "w2": (16, 8, 3, 3), "w3": (4, 24, 3, 3)}
    inits = [numpy_helper.from_array((rng.normal(size=s) / np.sqrt(np.prod(s[1:]))).astype("float32"), n)
             for n, s in w.items()]
    inits.append(numpy_helper.from_array(np.array([1, 16, 32, 32], "int64"), "size"))
    g = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["a"], ["ra"]),                      # [1, 8, 32, 32]
         helper.make_node("Conv", ["ra", "w2"], ["b"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["b"], ["rb"]),                      # [1, 16, 16, 16]
         helper.make_node("Resize", ["rb", "", "", "size"], ["up"], mode="linear"),
         helper.make_node("Concat", ["up", "ra"], ["cat"], axis=1),  # [1, 24, 32, 32]
         helper.make_node("Conv", ["cat", "w3"], ["logits"], pads=[1, 1, 1, 1])],
        "unet", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 32, 32])], inits)
    path = tmp_path_factory.mktemp("unet") / "unet.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("target", TARGETS)
def test_semantic_model_converts_to_int8_and_runs(target, unet, tmp_path):
    from edgeseg.convert import convert
    from edgeseg.convert.toolchains import get_toolchain
    from edgeseg.profiles import load_profile

    av = get_toolchain(load_profile(target).toolchain).availability()
    if not av.installed:
        pytest.skip(f"{target} toolchain missing ({av.detail}); install with: {av.install}")
    b = convert(unet, target=target, precision="int8", head="semantic", names="background,a,b,c",
                calib_images=16, out=tmp_path / target, log=lambda m: None)
    f = b.manifest.fidelity
    assert f["cosine"]["logits"] > 0.98 and f["pixel_agreement"] > 0.9, f
    if target == "mnn":
        assert b.manifest.quantization["quantized_convolutions"] == 2  # the output conv stays float
    if target == "imx500":  # the torch.fx module MCT quantizes reproduces the ONNX graph
        assert b.manifest.quantization["fx_max_error"] < 1e-4
    import cv2

    from edgeseg.runtime.backends import ReplayBackend
    from edgeseg.runtime.model import Model

    if target in RUNS_HERE:
        frame = cv2.imread(str(sorted(VAL_IMAGES.glob("*.jpg"))[0]))
    else:  # the NPU/sensor network ran in the vendor's simulator at conversion, on the held-back images
        from edgeseg.convert.calibration import CalibrationSet
        from edgeseg.defaults import DEFAULT_CALIB

        frame = cv2.imread(str(CalibrationSet.from_path(DEFAULT_CALIB, 16).holdout[0]))
    model = Model.load(b.path)
    assert isinstance(model.backend, ReplayBackend) is (target not in RUNS_HERE), model.backend.name
    res = model(frame)
    assert res.label_map.shape == frame.shape[:2] and res.label_map.max() < 4


@pytest.fixture(scope="module")
def unet_labels(unet, tmp_path_factory):
    """The same network ending in ArgMax: a [1, H, W] class-id output."""
    import onnx

    m = onnx.load(str(unet))
    m.graph.node.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 32, 32]))
    path = tmp_path_factory.mktemp("unet_labels") / "unet_labels.onnx"
    save(m, str(path))
    return path


def test_label_output_converts_to_int8_and_runs(unet_labels, tmp_path):
    import cv2

    from edgeseg.convert import convert
    from edgeseg.runtime.model import Model

    b = convert(unet_labels, target="onnxruntime", precision="int8", head="semantic", names="background,a,b,c",
                calib_images=16, out=tmp_path / "ort", log=lambda m: None)
    assert b.manifest.head["output"] == "labels" and b.manifest.fidelity["pixel_agreement"] > 0.9
    frame = cv2.imread(str(sorted(VAL_IMAGES.glob("*.jpg"))[0]))
    res = Model.load(b.path)(frame)  # class ids pass through: never "dequantized"
    assert res.label_map.shape == frame.shape[:2] and res.label_map.max() < 4


def test_ncnn_refuses_a_layer_its_runtime_lacks(unet_labels, tmp_path):
    pytest.importorskip("ncnn", reason='the NCNN target needs: pip install "edgeseg[ncnn-host]"')
    from edgeseg.convert import convert
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="no ArgMax layer.*export its logits"):
        convert(unet_labels, target="ncnn", precision="fp32", head="semantic", names="background,a,b,c",
                out=tmp_path / "ncnn", log=lambda m: None)
    assert not (tmp_path / "ncnn").exists()


def test_one_channel_model_thresholds_at_its_own_scale(tmp_path):
    """A binary model ends in a logit (foreground > 0) or in its own sigmoid (> 0.5): the same
    network either way gives the same mask, not an all-foreground frame."""
    import cv2

    from edgeseg.convert import convert
    from edgeseg.runtime.model import Model

    # foreground where the 3x3 neighbourhood is brighter than mid-gray
    w = numpy_helper.from_array(np.full((1, 3, 3, 3), 1 / 27, "float32"), "w")
    b = numpy_helper.from_array(np.array([-0.5], "float32"), "b")
    frame = cv2.imread(str(sorted(VAL_IMAGES.glob("*.jpg"))[0]))
    masks = {}
    for ending in ("logit", "sigmoid"):
        nodes = [helper.make_node("Conv", ["images", "w", "b"], ["out" if ending == "logit" else "z"],
                                  pads=[1, 1, 1, 1], strides=[2, 2])]
        if ending == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", ["z"], ["out"]))
        g = helper.make_graph(nodes, "bin",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 32, 32])], [w, b])
        src = tmp_path / f"{ending}.onnx"
        save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
        bundle = convert(src, target="onnxruntime", precision="fp32", head="semantic", out=tmp_path / ending,
                         log=lambda m: None)
        assert bundle.manifest.head["threshold"] == (0.5 if ending == "sigmoid" else 0.0)
        masks[ending] = Model.load(bundle.path)(frame).label_map
    assert 0.05 < masks["logit"].mean() < 0.95  # some of the frame, not all or nothing
    assert (masks["logit"] != masks["sigmoid"]).mean() < 0.001
