"""The device install on a Raspberry Pi 5's CPU and OS (emulated: see the ``aarch64`` fixture).
The target tests run their own bundles there too (``agreement_on_aarch64``)."""

import re

import pytest
from conftest import agreement_on_aarch64

# an emulated Raspberry Pi 5 (qemu-user)
pytestmark = pytest.mark.emulated


def test_device_install_runs_on_aarch64_without_host_packages(aarch64):
    r = aarch64("-c", "import platform, importlib.util as u; print(platform.machine(), "
                "[m for m in ('torch', 'onnx', 'ultralytics', 'tensorflow') if u.find_spec(m)])")
    assert r.returncode == 0 and r.stdout.split() == ["aarch64", "[]"], (r.stdout, r.stderr)
    r = aarch64("-m", "edgeseg", "doctor")
    assert r.returncode == 0 and "on aarch64" in r.stdout, r.stderr
    for target in ("onnxruntime", "ncnn", "mnn", "tflite", "rknn"):  # each target's "run:" line
        assert re.search(rf"^{target} .*\n\s+run:\s+ok", r.stdout, re.M), (target, r.stdout)


def test_onnxruntime_int8_bundle_decodes_the_same_on_aarch64(aarch64, int8_bundle, tmp_path):
    a = agreement_on_aarch64(aarch64, int8_bundle.path, tmp_path)
    # ONNX Runtime's int8 kernels for ARM give this model's x86 results exactly
    assert a["b"] > 20 and a["a"] == a["b"] == a["matched"] and a["mean_iou"] > 0.999, a
