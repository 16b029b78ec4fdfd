import json

import pytest
from conftest import VAL_IMAGES, cli


def test_bench_reports_every_stage(int8_bundle, tmp_path):
    js = tmp_path / "b.json"
    r = cli("bench", str(int8_bundle.path), "--source", str(VAL_IMAGES), "--frames", "20", "--json", str(js))
    assert r.returncode == 0, r.stderr
    d = json.loads(js.read_text())
    for k in ("preprocess_ms", "inference_ms", "decode_ms", "end_to_end_ms"):
        assert 0 < d[k]["median"] <= d[k]["p90"]
    assert d["end_to_end_ms"]["median"] >= d["inference_ms"]["median"]
    assert d["pipeline_fps"] > 0 and d["peak_rss_mb"] > 0 and d["instances_max"] > 0
    # what ran is named: on a board this is where "litert+edgetpu" or a host replay would show
    assert d["backend"] == "onnxruntime" and r.stdout.startswith("onnxruntime int8 on onnxruntime, "), r.stdout


def test_doctor_lists_targets_with_install_commands():
    r = cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    ort = next(t for t in d["targets"] if t["target"] == "onnxruntime")
    assert ort["toolchain_ok"] and ort["runtime_ok"]
    assert all(t["toolchain_install"] or t["toolchain_ok"] for t in d["targets"])


@pytest.mark.slow  # two doctor runs (each imports every toolchain)
def test_doctor_reports_optional_tools_found_or_what_happens_without(tmp_path):
    """edgetpu_compiler and ncnn's int8 tools install nowhere here: doctor says what a conversion
    does without them, and finds them on PATH when they are there (empty stand-ins: only found)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("ncnn", reason='the ncnn target needs: pip install "edgeseg[ncnn]"')

    def doctor(path: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "edgeseg", "doctor", "--json"], capture_output=True, text=True,
                           env=dict(os.environ, PATH=path), timeout=300)
        assert r.returncode == 0, r.stderr
        return {t["target"]: t.get("optional_tools", {}) for t in json.loads(r.stdout)["targets"]}

    # the PATH without any folder holding one of the tools: true with or without them installed
    tools = ("edgetpu_compiler", "ncnn2table", "ncnn2int8")
    bare = doctor(os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                                  if not any(os.path.exists(os.path.join(d, t)) for t in tools)))
    assert "writes the int8 model itself" in bare["ncnn"]["ncnn2table + ncnn2int8"]
    for tool in ("ncnn2table", "ncnn2int8"):
        (tmp_path / tool).write_text("#!/bin/sh\n")
        (tmp_path / tool).chmod(0o755)
    found = doctor(f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert found["ncnn"]["ncnn2table + ncnn2int8"] == f"{tmp_path / 'ncnn2table'} {tmp_path / 'ncnn2int8'}"


@pytest.mark.slow  # two doctor runs (each imports every toolchain)
def test_doctor_finds_libedgetpu_where_the_delegate_would_load_it(tmp_path):
    """No Coral runtime here: a stand-in libedgetpu.so.1 (a copy of another shared library, only
    dlopen-ed) on LD_LIBRARY_PATH is found by its soname, as LiteRT's load_delegate finds it."""
    import _ctypes
    import ctypes
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("ai_edge_litert", reason='the tflite target needs: pip install "edgeseg[tflite]"')

    def libedgetpu(env: dict) -> str:
        r = subprocess.run([sys.executable, "-m", "edgeseg", "doctor", "--json"], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return {t["target"]: t for t in json.loads(r.stdout)["targets"]}["edgetpu"]["optional_tools"]["libedgetpu"]

    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    try:  # a machine with the Coral runtime installed finds it without the stand-in
        ctypes.CDLL("libedgetpu.so.1")
        assert libedgetpu(env) == "libedgetpu.so.1"
    except OSError:
        assert libedgetpu(env).startswith("not found: edgetpu bundles run on the CPU here")
    shutil.copyfile(_ctypes.__file__, tmp_path / "libedgetpu.so.1")
    assert libedgetpu(dict(env, LD_LIBRARY_PATH=str(tmp_path))) == "libedgetpu.so.1"


def test_a_toolchain_env_is_not_shared_across_cpu_architectures(monkeypatch):
    """A home folder mounted on an x86 host and an ARM board must not hand one the other's wheels."""
    import platform

    from edgeseg.convert.envs import EnvSpec

    spec = EnvSpec("rknn", (("rknn-toolkit2==2.3.2",),))
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    x86 = spec.path
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert spec.path != x86 and spec.path.parent == x86.parent
