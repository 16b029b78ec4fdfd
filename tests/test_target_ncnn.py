"""NCNN target: pnnx conversion, INT8 computed by edgeseg on ncnn's formats, the real ncnn runtime."""

import numpy as np
import pytest
from conftest import DATA_YAML, MODEL, MODEL_V8, agreement_on_aarch64, assert_same_detections

pytest.importorskip("ncnn", reason='the NCNN target needs: pip install "edgeseg[ncnn-host]"')


@pytest.fixture(scope="module")
def nc(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("ncnn")
    return {p: convert(MODEL, target="ncnn", precision=p, out=d / p, log=lambda m: None) for p in ("fp32", "fp16", "int8")}


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
                 options={"set": {"activation_method": "kl"}})
    assert kl.manifest.quantization["activation_method"] == "kl"
    assert kl.manifest.fidelity["cosine"]["cls"] < b.manifest.fidelity["cosine"]["cls"] - 0.1  # what auto avoided


def test_int8_model_is_really_int8(nc):
    from edgeseg.convert.ncnn_int8 import read_param

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

    from edgeseg.convert.ncnn_int8 import TAG_I8, read_param

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


def test_ncnn_own_tools_give_the_same_accuracy(tmp_path):
    """ncnn2table + ncnn2int8 against edgeseg's table and writer. No PyPI or Debian package ships
    the two tools (TOOLCHAINS.md), so this runs only where someone built them onto PATH."""
    import shutil

    from edgeseg.convert import convert

    missing = [t for t in ("ncnn2table", "ncnn2int8") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: no package provides them; build ncnn's tools/quantize")
    tools = convert(MODEL, target="ncnn", out=tmp_path / "tools", log=lambda m: None,
                    options={"set": {"int8_tools": "ncnn"}})
    ours = convert(MODEL, target="ncnn", out=tmp_path / "ours", log=lambda m: None,
                   options={"set": {"int8_tools": "edgeseg"}})
    assert "ncnn2int8" in tools.manifest.quantization["scheme"]
    assert abs(_score(tools.path) - _score(ours.path)) <= 0.005


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
