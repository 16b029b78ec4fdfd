"""NCNN target: pnnx conversion, INT8 computed by edgeseg on ncnn's formats, the real ncnn runtime."""

import numpy as np
import pytest
from conftest import DATA_YAML, MODEL, MODEL_V8, agreement_on_aarch64, assert_same_detections

# drives pnnx and ncnn: `make test-fast` leaves it out
pytestmark = pytest.mark.toolchain

pytest.importorskip("ncnn", reason='the NCNN target needs: pip install "edgeseg[ncnn-host]"')


@pytest.fixture(scope="module")
def nc(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("ncnn")
    return {p: convert(MODEL, target="ncnn", precision=p, out=d / p, log=lambda m: None)
            for p in ("fp32", "fp16", "int8")}


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


def test_ncnn_accuracy(nc, fp32_bundle):
    ref = _score(fp32_bundle.path)
    assert abs(_score(nc["fp32"].path) - ref) <= 0.003
    assert abs(_score(nc["fp16"].path) - ref) <= 0.003
    assert ref - _score(nc["int8"].path) <= 0.010


def test_yolov8_int8_picks_the_table_that_follows_fp32(tmp_path):
    """KL thresholds alone clip the reference YOLOv8n-seg's class branch (mask mAP 0.571 against
    0.742); by default edgeseg builds the KL and the max table, runs both int8 models in ncnn and
    keeps the one closer to FP32, which must land within the goal."""
    from edgeseg.convert import convert

    b = convert(MODEL_V8, target="ncnn", out=tmp_path / "v8", log=lambda m: None)
    method = b.manifest.quantization["activation_method"]
    assert method.startswith("max (auto") and "'kl'" in method, method
    fp32 = convert(MODEL_V8, target="onnxruntime", precision="fp32", out=tmp_path / "fp32", log=lambda m: None)
    assert _score(fp32.path) - _score(b.path) <= 0.010
    kl = convert(MODEL_V8, target="ncnn", out=tmp_path / "kl", log=lambda m: None,
                 options={"activation_method": "kl"})
    assert kl.manifest.quantization["activation_method"] == "kl"
    assert kl.manifest.fidelity["cosine"]["cls"] < b.manifest.fidelity["cosine"]["cls"] - 0.1  # what auto avoided


def test_int8_model_is_really_int8(nc):
    from edgeseg.convert.toolchains.ncnn.int8 import read_param

    b = nc["int8"]
    layers, _ = read_param(b.path / "model.ncnn.param")
    convs = [l for l in layers if l.type in ("Convolution", "ConvolutionDepthWise")]
    assert all(l.params.get("8") in ("1", "2") for l in convs)
    assert b.manifest.quantization["quantized_layers"] == len(convs) == 99
    assert (b.path / "model.ncnn.bin").stat().st_size < (nc["fp32"].path / "model.ncnn.bin").stat().st_size / 3
    assert b.manifest.fidelity["cosine"]["cls"] > 0.9 and b.manifest.fidelity["detections_kept"] > 0.9


def test_int8_writer_round_trips_weights(tmp_path, nc):
    """Reading back the int8 file gives the FP32 weights within half a quantization step."""
    import struct

    from edgeseg.convert.toolchains.ncnn.int8 import TAG_I8, read_param

    fp, q = nc["fp32"].path, nc["int8"].path
    layers, _ = read_param(fp / "model.ncnn.param")
    first = layers[1]
    n = int(first.params["6"])
    w = np.frombuffer((fp / "model.ncnn.bin").read_bytes(), np.float32, n, 4)
    data = (q / "model.ncnn.bin").read_bytes()
    assert struct.unpack_from("<I", data, 0)[0] == TAG_I8
    wq = np.frombuffer(data, np.int8, n, 4).astype(np.float32)
    off = 4 + n + (-n) % 4 + 4 * int(first.params["0"])  # skip weights and bias
    scales = np.frombuffer(data, np.float32, int(first.params["0"]), off)
    back = wq.reshape(len(scales), -1) / scales[:, None]
    assert np.abs(back - w.reshape(len(scales), -1)).max() <= (0.5 / scales.min()) + 1e-6


def test_onnx_conv_names_find_their_ncnn_layers(nc, fp32_bundle):
    """pnnx renames every layer: --keep-float and --max-drop name ONNX nodes, found in the ncnn model
    by their weights. Each of the reference model's convolutions finds its own layer, which holds
    exactly its weights."""
    import onnx
    from onnx import numpy_helper

    from edgeseg.convert.toolchains.ncnn.mixed import _ncnn_weights, onnx_to_ncnn

    fp = nc["fp32"].path
    model = onnx.load(str(fp32_bundle.path / "model.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    found = onnx_to_ncnn(fp32_bundle.path / "model.onnx", fp / "model.ncnn.param", fp / "model.ncnn.bin",
                         [n.name for n in convs] + ["/model.0/act/Sigmoid"])
    assert len(found) == len(convs) == 99 and len(set(found.values())) == 99  # the activation maps to nothing
    weights = {l.name: w for l, w in _ncnn_weights(fp / "model.ncnn.param", fp / "model.ncnn.bin")}
    inits = {i.name: i for i in model.graph.initializer}
    n = convs[10]
    assert np.array_equal(weights[found[n.name]], numpy_helper.to_array(inits[n.input[1]]).ravel())


def test_ncnn_own_tools_give_the_same_accuracy(tmp_path):
    """ncnn2table + ncnn2int8 against edgeseg's table and writer, both with KL thresholds. No PyPI
    or Debian package ships the two tools (TOOLCHAINS.md), so this runs only where someone built
    them onto PATH. Measured once so, with the tools built from ncnn's source beside the project:
    0.8113 (the tools) and 0.8181 (edgeseg), FP32 0.8212. Their KL variant (smoothed, fractional
    bins) picks other thresholds on some blobs, and ncnn2int8 keeps 6 bits of 3x3 stride-1 weights."""
    import shutil

    from edgeseg.convert import convert

    missing = [t for t in ("ncnn2table", "ncnn2int8") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: no package provides them; build ncnn's tools/quantize")
    tools = convert(MODEL, target="ncnn", out=tmp_path / "tools", log=lambda m: None,
                    options={"int8_tools": "ncnn"})
    # ncnn2table's default thresholds are KL; edgeseg computes the same kind here
    ours = convert(MODEL, target="ncnn", out=tmp_path / "ours", log=lambda m: None,
                   options={"int8_tools": "edgeseg", "activation_method": "kl"})
    assert "ncnn2int8" in tools.manifest.quantization["scheme"]
    assert tools.manifest.quantization["activation_method"] == "kl"
    scores = {"ncnn2table + ncnn2int8": _score(tools.path), "edgeseg": _score(ours.path)}
    print("mask mAP50-95, int8 KL:", scores)
    # within the int8 goal's width of each other, and edgeseg's own path no worse than the tools'
    assert abs(scores["edgeseg"] - scores["ncnn2table + ncnn2int8"]) <= 0.010, scores
    assert scores["edgeseg"] >= scores["ncnn2table + ncnn2int8"] - 0.003, scores


def test_int8_winograd_kernels_give_the_gemms_numbers(nc):
    """ncnn2table keeps 6 bits of 3x3 stride-1 weights against an overflow in ncnn's int8 Winograd
    F(4,3) kernel; edgeseg's writer keeps 8. Integer Winograd is exact, so the bundle run with each
    int8 kernel must give the plain GEMM's numbers bit for bit (no overflow on these images)."""
    from conftest import VAL_IMAGES
    from ncnn_kernels import main

    r = main(str(nc["int8"].path), str(VAL_IMAGES), 20)
    assert r["images"] == 20 and r["max_abs_diff_vs_gemm"] == {"winograd43": 0.0, "winograd23": 0.0}, r


def test_int8_winograd_kernels_give_the_gemms_numbers_on_a_pi5_cpu(nc, aarch64):
    """The same on ARM, whose int8 Winograd and GEMM kernels are other code (emulated Cortex-A76)."""
    import json

    from conftest import ROOT, VAL_IMAGES

    r = aarch64(str(ROOT / "tests" / "ncnn_kernels.py"), str(nc["int8"].path), str(VAL_IMAGES), "3")
    assert r.returncode == 0, r.stderr
    r = json.loads(r.stdout.strip().splitlines()[-1])
    assert r["images"] == 3 and r["max_abs_diff_vs_gemm"] == {"winograd43": 0.0, "winograd23": 0.0}, r


def test_asking_for_ncnn_tools_that_are_absent_is_one_line(tmp_path, monkeypatch):
    from conftest import cli

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no ncnn2table here, whatever the machine has
    r = cli("convert", "--target", "ncnn", "--option", "int8_tools=ncnn", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "ncnn2table and ncnn2int8 are not on PATH" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("precision,options", [("int8", ()), ("fp16", ("-r", "fp16=true"))])
def test_bundle_on_a_pi5_cpu_decodes_as_here(nc, aarch64, tmp_path, precision, options):
    """On ARMv8.2 ncnn runs int8 layers on its dot-product kernels and, asked, fp16 arithmetic:
    code that x86 never reaches, fed the int8 model edgeseg wrote (emulated Cortex-A76)."""
    a = agreement_on_aarch64(aarch64, nc[precision].path, tmp_path, *options)
    assert_same_detections(a)
