"""Rockchip RKNN: the real rknn-toolkit2 in the isolated env edgeseg creates, its simulator for
accuracy, and the board backend driven against a stand-in at the ``rknnlite`` import only, and
against the real rknnlite on an emulated aarch64 board up to the missing NPU."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_YAML, MODEL, ROOT, VAL_IMAGES

# drives rknn-toolkit2 (its isolated env): `make test-fast` leaves it out
pytestmark = pytest.mark.toolchain

PLATFORMS = ["rk3588", "rk3576", "rk3566", "rk3568", "rk3562", "rv1106", "rv1103"]


def _convert(out, **kw):
    from edgeseg.convert import convert

    return convert(MODEL, target="rknn", out=out, log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def rk(tmp_path_factory):
    d = tmp_path_factory.mktemp("rknn")
    return {"split": _convert(d / "int8", verify_data=DATA_YAML),
            "nosplit": _convert(d / "int8_nosplit", verify_data=DATA_YAML, split=False)}


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)


def test_rk3588_int8_in_the_simulator(rk, fp32_bundle):
    b = rk["split"]
    m = b.manifest
    assert m.input["layout"] == "nhwc" and m.input["dtype"] == "uint8" and m.quantization["platform"] == "rk3588"
    f = m.fidelity  # per output role, never one whole-tensor cosine
    assert set(f["cosine"]) == {"box", "cls", "coef", "proto"} and f["cosine"]["cls"] > 0.98
    assert f["max_box_error_px"] is not None and f["mean_box_error_px"] < 2.0
    ref = _score(fp32_bundle.path)["mask_map50_95"]
    assert ref - _score(b.path)["mask_map50_95"] <= 0.015


def test_without_split_outputs_it_detects_nothing(rk):
    assert rk["nosplit"].manifest.fidelity["cosine"]["cls"] < 0.1
    assert _score(rk["nosplit"].path)["mask_map50_95"] < 0.05


@pytest.mark.parametrize("platform", PLATFORMS[1:])
def test_every_listed_soc_converts(platform, tmp_path):
    b = _convert(tmp_path / platform, platform=platform, fidelity=False, calib_images=16)
    assert b.manifest.quantization["platform"] == platform and (b.path / "model.rknn").stat().st_size > 100_000


def test_unknown_platform_is_refused(tmp_path):
    from edgeseg.errors import EdgesegError

    with pytest.raises(EdgesegError, match="unknown RKNN platform 'rk9999'"):
        _convert(tmp_path / "x", platform="rk9999", fidelity=False)
    assert not (tmp_path / "x").exists()


def test_board_backend_against_an_rknnlite_stand_in(rk, monkeypatch):
    """Only ``rknnlite.api.RKNNLite`` is faked (this x86 machine has no NPU); it answers with the
    tensors the quantized model produced in the toolkit simulator. Decoder and pipeline are real."""
    from edgeseg.bundle import sha256_file
    from edgeseg.runtime.backends.rknn import RknnLiteBackend
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.pipeline import run_pipeline
    from edgeseg.runtime.replay import Replay
    from edgeseg.runtime.sources import open_source

    bundle = rk["split"]
    replay = Replay(sha256_file(bundle.path / "model.rknn"))
    calls = {}

    class FakeRKNNLite:
        NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2, NPU_CORE_0_1, NPU_CORE_0_1_2 = 0, 1, 2, 4, 3, 7

        def __init__(self, verbose=False):
            pass

        def load_rknn(self, path):
            calls["path"] = path
            return 0

        def init_runtime(self, core_mask=0):
            calls["core_mask"] = core_mask
            return 0

        def inference(self, inputs, data_format=None):
            x = inputs[0]
            assert x.dtype == np.uint8 and x.shape == (1, 320, 320, 3) and data_format == "nhwc"
            outs = replay(x)
            return [outs[o["name"]].reshape(-1) for o in bundle.manifest.outputs]  # flat, as some runtimes return

        def release(self):
            calls["released"] = True

    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = FakeRKNNLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)

    board = Model.load(bundle.path, core_mask="all")
    assert isinstance(board.backend, RknnLiteBackend) and calls["core_mask"] == 7
    monkeypatch.delitem(sys.modules, "rknnlite.api")
    monkeypatch.delitem(sys.modules, "rknnlite")
    host = Model.load(bundle.path)  # no rknnlite: the simulator replay
    assert type(host.backend).__name__ == "SimulatedRknnBackend"
    seen = []
    st = run_pipeline(board, open_source(str(VAL_IMAGES / "0000*.jpg")), [], annotate=False,
                      on_frame=lambda s, fr, res: seen.append((fr.image, res)))
    assert st.frames == 10
    assert sum(len(res.instances) for _, res in seen) > 10  # the scenes hold ~4 shapes each: not an empty comparison
    for frame, res in seen:
        ref = host(frame)
        assert [i.class_id for i in res.instances] == [i.class_id for i in ref.instances]
        assert all(np.abs(a.box - b.box).max() < 1e-3 for a, b in zip(res.instances, ref.instances))
    board.close()
    assert calls.get("released")


def test_board_backend_with_the_real_rknnlite_on_aarch64(rk, aarch64):
    """The real rknn-toolkit-lite2 (its aarch64 wheel) on the emulated board: every core_mask edgeseg
    offers is one of RKNNLite's constants, RKNNLite reads the bundle's model, and with no NPU there
    (none is emulated) the run ends on edgeseg's one line saying what the board needs."""
    from edgeseg.runtime.backends.rknn import core_masks

    # the calls RknnLiteBackend makes (and the stand-in above answers) fit the real signatures
    r = aarch64("-c", "import inspect\nfrom rknnlite.api import RKNNLite as R\n"
                "def call(m, *a, **k): inspect.signature(getattr(R, m)).bind(None, *a, **k)\n"
                "call('__init__', verbose=False); call('load_rknn', 'model.rknn'); call('init_runtime')\n"
                "call('init_runtime', core_mask=R.NPU_CORE_0_1_2); call('inference', inputs=[0], data_format='nhwc')\n"
                "call('release')\nprint(*[n for n in dir(R) if n.startswith('NPU_')])")
    assert r.returncode == 0, r.stderr
    assert set(core_masks(rk["split"]).values()) <= set(r.stdout.split()), r.stdout
    r = aarch64("-m", "edgeseg", "run", str(rk["split"].path), "--source", str(VAL_IMAGES), "--max-frames", "1",
                "-r", "core_mask=all")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: ") and "the NPU runtime did not start" in last, r.stderr
    assert "could not read the model" not in r.stderr and str(ROOT / "edgeseg") not in r.stderr  # none of our frames


def test_fp16_and_float_tail_options(tmp_path, fp32_bundle):
    """FP16 on the NPU matches FP32; a float tail (hybrid quantization: every output's last conv in
    FP16) builds through rknn-toolkit2's two hybrid steps and keeps INT8 accuracy."""
    ref = _score(fp32_bundle.path)["mask_map50_95"]
    fp16 = _convert(tmp_path / "fp16", precision="fp16", verify_data=DATA_YAML)
    assert abs(_score(fp16.path)["mask_map50_95"] - ref) <= 0.003
    tail = _convert(tmp_path / "tail", verify_data=DATA_YAML, options={"float_tail": "true"})
    q = tail.manifest.quantization
    # the head convolutions end in a Conv; the prototypes end in an activation and stay INT8
    assert sorted(q["float_tail"]) == sorted(o["name"] for o in tail.manifest.outputs if o["role"] != "protos")
    assert "hybrid_quantization_step2" in (tail.path / "toolchain.log").read_text()
    assert ref - _score(tail.path)["mask_map50_95"] <= 0.015


@pytest.mark.parametrize("platform, masks, all_cores", [("rk3588", {"auto", "0", "1", "2", "0_1", "all"},
                                                         "NPU_CORE_0_1_2"),
                                                        ("rk3576", {"auto", "0", "1", "0_1", "all"}, "NPU_CORE_0_1"),
                                                        ("rk3566", {"auto"}, None), ("rv1106", {"auto"}, None)])
def test_core_masks_follow_the_socs_npu_cores(platform, masks, all_cores):
    """core_mask=all used to mean three cores everywhere, which RK3576 (two) and the one-core
    SoCs reject at init_runtime on the board."""
    import tomllib

    from edgeseg.runtime.backends.rknn import core_masks

    profile = tomllib.loads((Path(__file__).parents[1] / "targets" / "rknn.toml").read_text())
    bundle = types.SimpleNamespace(manifest=types.SimpleNamespace(profile=profile, quantization={"platform": platform}))
    got = core_masks(bundle)
    assert set(got) == masks and got.get("all") == all_cores


def test_a_core_mask_the_soc_lacks_is_one_clear_error(monkeypatch, tmp_path):
    import tomllib

    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.backends.rknn import RknnLiteBackend

    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = object
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    profile = tomllib.loads((Path(__file__).parents[1] / "targets" / "rknn.toml").read_text())
    manifest = types.SimpleNamespace(profile=profile, quantization={"platform": "rk3566"}, outputs=[])
    bundle = types.SimpleNamespace(manifest=manifest, path=tmp_path)
    with pytest.raises(EdgesegError, match="core_mask=all does not exist on rk3566; choose one of: auto$"):
        RknnLiteBackend(bundle, core_mask="all")


def test_an_npu_inference_failure_is_one_clear_error(monkeypatch, tmp_path):
    """RKNNLite logs a failed inference and returns None; that used to surface as a TypeError
    from deep in the backend. The stand-in is at the ``rknnlite`` import only."""
    import tomllib

    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.backends.rknn import RknnLiteBackend

    class FailingRKNNLite:
        NPU_CORE_AUTO = 0

        def __init__(self, verbose=False):
            pass

        def load_rknn(self, path):
            return 0

        def init_runtime(self, **kw):
            return 0

        def inference(self, inputs, data_format=None):
            return None

    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = FailingRKNNLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    profile = tomllib.loads((Path(__file__).parents[1] / "targets" / "rknn.toml").read_text())
    manifest = types.SimpleNamespace(profile=profile, quantization={"platform": "rk3566"}, model_files=["model.rknn"],
                                     outputs=[{"name": "boxes", "shape": [1, 4, 10]}])
    bundle = types.SimpleNamespace(manifest=manifest, path=tmp_path, file=lambda name: tmp_path / name)
    backend = RknnLiteBackend(bundle)
    with pytest.raises(EdgesegError, match="the NPU returned nothing; see rknnlite's log above"):
        backend.run(np.zeros((1, 320, 320, 3), np.uint8))
