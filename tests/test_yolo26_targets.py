"""The reference YOLO26n-seg converted to INT8 for every vendor target, each bundle scored on the
100 reference scenes against the FP32 bundle (ONNX Runtime INT8: test_yolo26.py; OpenVINO:
test_target_openvino.py). RKNN and IMX500 are scored through their simulators' recorded outputs
(--verify-data), since this machine has neither NPU; every other target runs its real runtime."""

import importlib.util

import pytest
from conftest import DATA_YAML, MODEL_Y26

# each drives a vendor converter (minutes): `make test-fast` leaves them out
pytestmark = [pytest.mark.toolchain, pytest.mark.slow]

GOAL = 0.010  # mask mAP50-95 below FP32 (issue #22)
# measured drops above the goal, bounded so that a further loss fails: MNN -0.029, NCNN -0.012
# (README; NCNN lost 0.028 while its KL table, which clips the class branch, was picked). An ONNX
# Runtime simulation of MNN's scheme (asymmetric per-tensor activations with its shared ranges,
# per-channel weights, output convolutions float) keeps class cosine 0.99 and prototypes 0.994,
# where MNN's runtime gives 0.95 and 0.955: the loss is in how MNN executes this int8 graph, not
# in the split outputs or the ranges edgeseg measures.
KNOWN = {"mnn": 0.035, "ncnn": 0.020}


def _score(path) -> float:
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


@pytest.fixture(scope="module")
def fp32_map(y26_fp32_bundle) -> float:
    return _score(y26_fp32_bundle.path)


def _available(target: str) -> None:
    from edgeseg.convert.toolchains import load_toolchain
    from edgeseg.profiles import load_profile

    av = load_toolchain(load_profile(target).toolchain).availability()
    if not av.installed:
        pytest.skip(f"the {target} target is not installed: {av.detail}; install with: {av.install}")


def _needs_module(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f'the target needs: pip install "edgeseg[{extra}]"')


@pytest.mark.parametrize("target, runtime, extra, kw", [
    # the full-integer model the Edge TPU profile writes (the tflite target's int8 is the same model)
    ("edgetpu", "ai_edge_litert", "tflite", {}),
    ("mnn", "MNN", "mnn", {}),
    ("ncnn", "ncnn", "ncnn-host", {}),
    ("rknn", None, None, {"verify_data": DATA_YAML}),
    ("imx500", None, None, {"verify_data": DATA_YAML}),
])
def test_reference_int8_within_goal_of_fp32(target, runtime, extra, kw, tmp_path, fp32_map):
    from edgeseg.convert import convert

    if runtime:
        _needs_module(runtime, extra)
    _available(target)
    b = convert(MODEL_Y26, target=target, precision="int8", out=tmp_path / target, log=lambda m: None, **kw)
    assert b.manifest.head["type"] == "yolo26-seg" and b.manifest.head["layout"] == "split"
    assert "unusable" not in b.manifest.fidelity
    if target == "edgetpu":  # full integer: no SPLIT_V or other op left for a flex delegate
        assert all(o["quant"]["dtype"] == "int8" for o in b.manifest.outputs)
    if target == "imx500":  # scales joined per role: within the sensor's 8 output tensors
        assert len(b.manifest.outputs) == 4 and b.manifest.head["grids"]
    int8 = _score(b.path)
    assert fp32_map > 0.5 and fp32_map - int8 <= KNOWN.get(target, GOAL), (target, fp32_map, int8)
