"""OpenVINO target, converted and run for real (openvino + nncf from PyPI)."""

import subprocess
import sys

import pytest
from conftest import DATA_YAML, MODEL, agreement_on_aarch64, assert_same_detections, convert_without

# drives OpenVINO and NNCF: `make test-fast` leaves it out
pytestmark = pytest.mark.toolchain

pytest.importorskip("openvino", reason='the OpenVINO target needs: pip install "edgeseg[openvino-host]"')
pytest.importorskip("nncf", reason='the OpenVINO target needs: pip install "edgeseg[openvino-host]"')


@pytest.fixture(scope="module")
def ov_bundles(tmp_path_factory):
    from edgeseg.convert import convert

    d = tmp_path_factory.mktemp("ov")
    return {p: convert(MODEL, target="openvino", precision=p, out=d / p, log=lambda m: None) for p in ("fp32", "int8")}


def _score(path):
    from edgeseg.eval import evaluate
    from edgeseg.runtime.model import Model, Thresholds

    return evaluate(Model.load(path, thresholds=Thresholds(conf=0.001)), DATA_YAML, progress=False)["mask_map50_95"]


def test_openvino_fp32_and_int8_accuracy(ov_bundles, fp32_bundle):
    b = ov_bundles["int8"]
    assert b.manifest.runtime == "openvino" and b.manifest.model_files == ["model.xml", "model.bin"]
    assert b.manifest.fidelity["cosine"]["cls"] > 0.98
    ort_fp32 = _score(fp32_bundle.path)
    ov_fp32, ov_int8 = _score(ov_bundles["fp32"].path), _score(b.path)
    assert abs(ov_fp32 - ort_fp32) <= 0.003, (ov_fp32, ort_fp32)
    assert ort_fp32 - ov_int8 <= 0.010, (ov_int8, ort_fp32)


def test_missing_toolchain_gives_the_install_command(tmp_path):
    from edgeseg.install import pip_extra

    r = convert_without({'openvino', 'nncf'}, "openvino", tmp_path / "b")
    assert r.returncode == 2 and pip_extra("openvino-host") in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


def test_conversion_sends_no_usage_events(ov_bundles):
    # OpenVINO's converter and NNCF send usage events unless a consent file opts out; the guarded
    # conversion process refuses their telemetry package instead
    for b in ov_bundles.values():
        assert b.manifest.quantization["telemetry"] == "off: import openvino_telemetry refused"


def test_openvino_and_nncf_fall_back_to_their_telemetry_stubs():
    code = ("from edgeseg.convert.toolchains._guarded import install_guard, violations\n"
            "install_guard()\n"
            "import sys, openvino, nncf\n"
            "from nncf.telemetry.wrapper import NNCFTelemetryStub, telemetry\n"
            "from openvino.tools.ovc import telemetry_utils\n"
            "print(isinstance(telemetry, NNCFTelemetryStub), telemetry_utils.tm.__name__,\n"
            "      'openvino_telemetry' in sys.modules, violations)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "openvino.tools.ovc.telemetry_stub", "False", "[]"]


def test_running_a_bundle_sends_nothing_until_the_user_answers_openvinos_consent(ov_bundles, tmp_path):
    """``import openvino`` sends a Google Analytics event and writes a client id under ~/intel when
    no consent file exists; in an edgeseg process (doctor's probe, a run) its telemetry package is
    refused until ~/intel/openvino_telemetry records the user's answer, which is then OpenVINO's."""
    import os

    code = ("import sys, numpy as np, edgeseg\n"
            "from edgeseg.convert.toolchains.openvino import OpenVinoToolchain\n"
            "assert OpenVinoToolchain.availability().installed\n"
            "m = edgeseg.load(sys.argv[1]); m(np.zeros((240, 320, 3), np.uint8)); m.close()\n"
            "print('openvino_telemetry' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    home = tmp_path / "home"
    home.mkdir()
    r = subprocess.run([sys.executable, "-c", code, str(ov_bundles["int8"].path)], env=dict(env, HOME=str(home)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"] and not any(home.iterdir()), sorted(home.rglob("*"))
    # an answer on record (here: no) is OpenVINO's to read, and nothing else is refused
    (home / "intel").mkdir()
    (home / "intel" / "openvino_telemetry").write_text("0")
    r = subprocess.run([sys.executable, "-c", code, str(ov_bundles["int8"].path)], env=dict(env, HOME=str(home)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True"] and sorted(p.name for p in (home / "intel").iterdir()) == ["openvino_telemetry"]


def test_device_is_chosen_on_the_command_line(ov_bundles):
    """--runtime-option device=...: AUTO runs here; a device this machine lacks is one line."""
    import openvino as ov
    from conftest import VAL_IMAGES, cli

    b = str(ov_bundles["int8"].path)
    r = cli("run", b, "--source", str(VAL_IMAGES), "--max-frames", "3", "-r", "device=AUTO", "-r", "threads=1")
    assert r.returncode == 0 and "3 frames" in r.stdout, r.stderr
    absent = next(d for d in ("NPU", "GPU", "CPU") if d not in ov.Core().available_devices)
    r = cli("run", b, "--source", str(VAL_IMAGES), "--max-frames", "3", "-r", f"device={absent}")
    assert r.returncode == 2 and f"OpenVINO finds no {absent} device here" in r.stderr, r.stderr


def test_the_x86_example_runs_as_written(ov_bundles, tmp_path):
    """examples/x86-openvino/run_openvino.py on the INT8 bundle, the CPU device and the sample
    scenes in place of a camera: it writes one JSON line per frame."""
    import json

    from conftest import ROOT, VAL_IMAGES

    r = subprocess.run([sys.executable, str(ROOT / "examples" / "x86-openvino" / "run_openvino.py"),
                        str(ov_bundles["int8"].path), "--device", "CPU", "--camera", str(VAL_IMAGES), "--frames", "5"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "detections.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(ln)["instances"] for ln in lines)
    assert "'frames': 5" in r.stdout


@pytest.mark.parametrize("precision,options", [("int8", ()), ("fp32", ("-r", "inference_precision=f16"))])
def test_bundle_on_an_arm_board_decodes_as_here(ov_bundles, aarch64, tmp_path, precision, options):
    """OpenVINO's ARM CPU plugin (oneDNN/ACL kernels; it computes in f16 unless told f32, which
    edgeseg tells it) on an emulated Cortex-A76, against this machine over the same frames."""
    a = agreement_on_aarch64(aarch64, ov_bundles[precision].path, tmp_path, *options)
    assert_same_detections(a)


@pytest.mark.slow
@pytest.mark.toolchain
def test_yolo26_int8_within_0_010_of_its_fp32(tmp_path, y26_fp32_bundle):
    """YOLO26n-seg (no DFL, one-to-many head split per stride) quantized by NNCF."""
    from conftest import MODEL_Y26

    from edgeseg.convert import convert

    b = convert(MODEL_Y26, target="openvino", precision="int8", out=tmp_path / "y26", log=lambda m: None)
    assert b.manifest.head["type"] == "yolo26-seg" and "unusable" not in b.manifest.fidelity
    assert _score(y26_fp32_bundle.path) - _score(b.path) <= 0.010
