"""MNN target, converted and run for real (MNN from PyPI), and proof that converting neither
installs anything nor touches the network (importing MNN.tools would do both)."""

import subprocess
import sys

import pytest
from conftest import DATA_YAML, MODEL, MODEL_V8, agreement_on_aarch64, assert_same_detections, cli, convert_without

# drives MNN's converter: `make test-fast` leaves it out
pytestmark = pytest.mark.toolchain

pytest.importorskip("_tools", reason='the MNN target needs: pip install "edgeseg[mnn]"')


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


@pytest.fixture(scope="module")
def mnn_bundles(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("mnn")
    out = {p: convert(MODEL, target="mnn", precision=p, out=d / p, log=lambda m: None)
           for p in ("fp32", "fp16", "int8w")}
    out["int8"] = convert(MODEL, target="mnn", precision="int8", out=d / "int8", log=lambda m: None)
    return out


def test_mnn_float_bundles_match_onnxruntime(mnn_bundles, fp32_bundle):
    ref = _score(fp32_bundle.path)
    for p in ("fp32", "fp16", "int8w"):
        assert abs(_score(mnn_bundles[p].path) - ref) <= 0.003, p
    assert ((mnn_bundles["int8w"].path / "model.mnn").stat().st_size
            < (mnn_bundles["fp32"].path / "model.mnn").stat().st_size / 3)


def test_mnn_full_int8_within_goal_of_fp32(mnn_bundles, fp32_bundle):
    b = mnn_bundles["int8"]
    q = b.manifest.quantization
    assert q["int8_tool"] == "edgeseg" and q["quantized_convolutions"] > 80
    # int8 weights really are in the file: a quarter of the float one, plus the float output convs
    assert (b.path / "model.mnn").stat().st_size < (mnn_bundles["fp32"].path / "model.mnn").stat().st_size / 3
    assert b.manifest.fidelity["cosine"]["cls"] > 0.99
    assert _score(fp32_bundle.path) - _score(b.path) <= 0.010  # the goal
    assert "toolchain.log" in b.manifest.files  # the converter's own log is kept in the bundle


def test_each_int8_load_is_checked_against_the_fp32_probe(mnn_bundles):
    from edgeseg.runtime.backends.mnn import MnnBackend
    from edgeseg.runtime.loadcheck import ATTEMPTS, PROBE_FILE, open_checked, probe_cosines

    b = mnn_bundles["int8"]
    assert PROBE_FILE in b.manifest.files and PROBE_FILE not in mnn_bundles["fp32"].manifest.files
    assert min(probe_cosines(b, MnnBackend(b).run).values()) >= 0.97  # the real runtime, a healthy load
    bad_loads = {1}

    class Load(MnnBackend):  # stands in for a load whose class scores go wrong (MNN's x86 int8 kernels)
        def __init__(self, bundle, n):
            super().__init__(bundle)
            self.bad = n in bad_loads

        def run(self, x):
            out = super().run(x)
            return {k: (-v if self.bad and k.startswith("cls") else v) for k, v in out.items()}

    loads, msgs = [], []

    def open_once():
        loads.append(1)
        return Load(b, len(loads))

    assert not open_checked(b, open_once, log=msgs.append).bad
    assert len(loads) == 2 and len(msgs) == 1 and "reopening" in msgs[0]
    bad_loads.update(range(1, 10))  # never healthy: used anyway, with a warning that says what to do
    loads.clear()
    msgs.clear()
    assert open_checked(b, open_once, log=msgs.append).bad
    assert len(loads) == ATTEMPTS and "detections will be degraded" in msgs[-1]


PROBE = """
import json, sys
from edgeseg.bundle import Bundle
from edgeseg.runtime.backends.mnn import MnnBackend
from edgeseg.runtime.loadcheck import probe_cosines
b = Bundle.load(sys.argv[1])
print(json.dumps(probe_cosines(b, MnnBackend(b).run)))
"""


def test_yolov8_int8_loads_alike_in_every_process_and_meets_the_goal(tmp_path):
    """The reference YOLOv8n-seg's P4 output feeds two quantized convolutions through two concats.
    With a range per convolution, MNN kept both sets of int8 parameters on that tensor and each load
    used one of them by memory address: the same file gave class cosines of 0.63, 0.98 or 0.995
    depending only on the arguments of the process that loaded it (the extra arguments below). With
    one range per shared group, every load computes the same outputs."""
    import json

    from edgeseg.convert import convert

    b = convert(MODEL_V8, target="mnn", precision="int8", out=tmp_path / "v8", log=lambda m: None)
    runs = [subprocess.run([sys.executable, "-c", PROBE, str(b.path), *extra], capture_output=True, text=True,
                           timeout=300) for extra in ([], ["x"], ["x", "y"], ["aa", "b", "c", "d"])]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-300:] for r in runs]
    cosines = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    assert all(c == cosines[0] for c in cosines) and min(cosines[0].values()) >= 0.97, cosines
    fp32 = convert(MODEL_V8, target="onnxruntime", precision="fp32", out=tmp_path / "fp32", log=lambda m: None)
    assert _score(fp32.path) - _score(b.path) <= 0.010


def test_shared_ranges_join_tensors_through_concat_and_resize():
    from onnx import TensorProto, helper

    from edgeseg.convert.toolchains.mnn.int8 import shared_ranges

    # p feeds conv A through Resize -> Concat(up, q) and conv B through Concat(r, p); s is separate
    g = helper.make_graph(
        [helper.make_node("Resize", ["p", "", "scales"], ["up"]),
         helper.make_node("Concat", ["up", "q"], ["ca"], axis=1),
         helper.make_node("Concat", ["r", "p"], ["cb"], axis=1),
         helper.make_node("Relu", ["cb"], ["s"])],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("p", "q", "r")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("ca", "s")])
    ranges = {"ca": (-0.3, 4.0), "cb": (-0.2, 9.0), "s": (0.0, 9.0), "q": (-0.3, 1.0)}
    out = shared_ranges(helper.make_model(g), ranges)
    assert out["ca"] == out["cb"] == out["q"] == (-0.3, 9.0)  # one group: up, p, q, r, ca, cb
    assert out["s"] == (0.0, 9.0)  # a Relu changes values: its own range


def test_mnnquant_remains_an_option(tmp_path, fp32_bundle):
    from edgeseg.convert import convert

    b = convert(MODEL, target="mnn", precision="int8", out=tmp_path / "q", calib_images=16,
                options={"int8_tool": "mnnquant"}, log=lambda m: None)
    assert b.manifest.quantization["feature_quantize_method"] == "EMA"
    assert b.manifest.fidelity["cosine"]["cls"] > 0.9 and b.manifest.fidelity["detections_kept"] > 0.8


def test_compression_params_cover_each_range_and_keep_outputs_float():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.convert.toolchains.mnn.int8 import compression_params, conv_layers

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(8, 3, 3, 3)).astype("float32"), rng.normal(size=(4, 8, 1, 1)).astype("float32")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g)
    layers = conv_layers(m)
    assert [l.name for l in layers] == ["c1"]  # c2 produces a model output: it stays float
    assert conv_layers(m, keep_float=["c1"]) == []
    p = compression_params(layers, {"x": (0.0, 1.0), "r": (0.0, 6.0)})
    layer = p["algo"][0]["quantParams"]["layer"][0]
    assert layer["output"][0]["name"] == "r"  # MNN fuses the ReLU: its output is the conv's now
    for act, (lo, hi) in ((layer["input"][0], (0.0, 1.0)), (layer["output"][0], (0.0, 6.0))):
        s, z = act["scales"][0], act["zeroPoint"]
        assert abs((-128 - z) * s - lo) < s and abs((127 - z) * s - hi) < s  # int8 ends map to the range ends
    ws = np.array(layer["weight"][0]["scales"])
    assert ws.shape == (8,) and np.allclose(ws * 127, np.abs(w1).reshape(8, -1).max(1))


def test_percentile_ranges_clip_a_rare_outlier_that_minmax_keeps(tmp_path):
    """--max-drop's second MNN calibration: one extreme input value in one image stretches MinMax's
    range; the percentile range stays with the bulk of the values, and stays asymmetric."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    from edgeseg.convert.toolchains.mnn.int8 import tensor_ranges

    w = np.ones((2, 1, 1, 1), "float32")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 256, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 256, 256])],
                          [numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    rng = np.random.default_rng(0)
    # 1M output values: the outlier's two are under the 0.0005% percentile calibration cuts on each side
    xs = [rng.uniform(-0.3, 2.0, (1, 1, 256, 256)).astype("float32") for _ in range(8)]
    xs[3][0, 0, 5, 5] = 50.0
    mm = tensor_ranges(path, "x", iter(xs))
    pc = tensor_ranges(path, "x", iter(xs), "percentile")
    assert mm["y"][1] == pytest.approx(50.0) and pc["y"][1] < 2.5  # the outlier clipped
    assert -0.35 < pc["y"][0] < -0.2  # the negative side is its own, not -max


def test_relu_network_really_gets_int8_convolutions(tmp_path):
    """MNN fuses Conv+ReLU before placing compression parameters; keyed on the conv's own output
    they were dropped without a word and the 'int8' model came out all float."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    from edgeseg.convert import convert

    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 3, 3, 3), "w2": (16, 16, 3, 3), "w3": (3, 16, 1, 1)}
    inits = [numpy_helper.from_array((rng.normal(size=s) * 0.3).astype("float32"), n) for n, s in shapes.items()]
    g = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["a"], ["ra"]),
         helper.make_node("Conv", ["ra", "w2"], ["b"], pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["b", "lo", "hi"], ["rb"]),  # ReLU6
         helper.make_node("Conv", ["rb", "w3"], ["logits"])],
        "relu", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])],
        inits + [numpy_helper.from_array(np.array(0, "float32"), "lo"),
                 numpy_helper.from_array(np.array(6, "float32"), "hi")])
    src = tmp_path / "relu.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    b = convert(src, target="mnn", precision="int8", head="semantic", names="a,b,c", out=tmp_path / "b",
                log=lambda m: None)
    q = b.manifest.quantization
    assert q["requested_convolutions"] == q["quantized_convolutions"] == 2 and q["convolutions"] == 3, q
    assert b.manifest.fidelity["pixel_agreement"] > 0.9


def test_relative_paths_from_the_shell(tmp_path):
    """The guarded converter runs in its own working folder: paths typed relative to the user's
    shell must still point at the model, the images and the bundle (they once did not)."""
    import os
    import shutil

    shutil.copy(MODEL, tmp_path / "model.onnx")
    calib = os.path.relpath(MODEL.parent / "shapes" / "calib" / "images", tmp_path)
    r = cli("convert", "model.onnx", "--target", "mnn", "--int8", "--calib", calib, "--calib-images", "8",
            "--out", "out/b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "b" / "model.mnn").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]  # no work folder left beside it


def _guarded(code: str) -> subprocess.CompletedProcess:
    pre = "from edgeseg.convert.toolchains._guarded import install_guard, violations\ninstall_guard()\n"
    return subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=120)


def test_guard_blocks_mnn_tools_network_and_installs():
    r = _guarded("import MNN.tools")
    assert r.returncode != 0 and "blocked importing MNN.tools" in r.stderr
    r = _guarded("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert r.returncode != 0 and "blocked socket." in r.stderr  # getaddrinfo or connect, whichever comes first
    r = _guarded("import os\nos.system('pip --version')")
    assert r.returncode != 0 and "blocked os.system" in r.stderr
    r = _guarded("import subprocess\nsubprocess.run(['pip', 'install', 'aliyun-log-python-sdk'])")
    assert r.returncode != 0 and "blocked subprocess.Popen" in r.stderr
    # a shared-library lookup (ctypes.util.find_library runs `ldconfig -p`) is local and allowed:
    # CUDA-aware packages do it when imported
    r = _guarded("import ctypes.util\nctypes.util.find_library('c')\nassert not violations")
    assert r.returncode == 0, r.stderr


def test_conversion_installs_nothing(mnn_bundles):
    import importlib.util

    assert importlib.util.find_spec("aliyun") is None  # MNN.tools would have pip-installed it


def test_missing_mnn_gives_the_install_command(tmp_path):
    from edgeseg.install import pip_extra

    r = convert_without({'MNN', '_tools'}, "mnn", tmp_path / "b")
    assert r.returncode == 2 and pip_extra("mnn") in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


def test_int8_bundle_on_a_pi5_cpu_decodes_as_here(mnn_bundles, aarch64, tmp_path):
    """MNN's int8 kernels on ARMv8.2 (sdot) are not the ones x86 runs (emulated Cortex-A76)."""
    a = agreement_on_aarch64(aarch64, mnn_bundles["int8"].path, tmp_path)
    assert_same_detections(a)
