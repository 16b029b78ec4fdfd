"""A target added from outside the tree: one profile, one toolchain package and one backend in a
folder on EDGESEG_PLUGIN_PATH, and no edit anywhere in edgeseg. The made-up toolchain writes the
FP32 ONNX with a typed option recorded; the made-up runtime runs it with ONNX Runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import MODEL, VAL_IMAGES

PROFILE = """
name = "toy"
description = "made-up target for the plugin test"
toolchain = "toytool"
runtime = "toyrt"

[input]
layout = "nchw"
dtype = "float32"

[quantization]
precisions = ["fp32"]
default = "fp32"
split_outputs = true
label = "from the profile"
"""

TOOLCHAIN = '''
import shutil

from edgeseg.options import Option
from .. import Availability, ConvertJob, ConvertResult, Toolchain


class ToyToolchain(Toolchain):
    name = "toytool"
    OPTIONS = {"label": Option(str, "recorded in the manifest", "toolchain default"),
               "copies": Option(int, "how many times the model is copied", 1)}

    @classmethod
    def availability(cls):
        return Availability(True, {"toytool": "1.0"})

    def convert(self, job: ConvertJob) -> ConvertResult:
        for _ in range(job.settings["copies"]):
            shutil.copyfile(job.fp32_path, job.workdir / "model.onnx")
        return ConvertResult(["model.onnx"], [dict(o, quant=None) for o in job.outputs],
                             {"precision": job.precision, "label": job.settings["label"]}, {"toytool": "1.0"})


TOOLCHAIN = ToyToolchain()
'''

BACKEND = '''
from edgeseg.runtime.backends import Backend, Requirement

REQUIRES = Requirement("onnxruntime", "onnxruntime", "pip install onnxruntime")
OPTIONS = {"threads": (int, "CPU threads")}


class ToyBackend(Backend):
    name = "toyrt"

    def __init__(self, bundle, threads=None, **options):
        super().__init__(bundle, **options)
        import onnxruntime as ort

        self.s = ort.InferenceSession(str(bundle.file("model.onnx")), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.s.get_outputs()]

    def run(self, x):
        return dict(zip(self.names, self.s.run(None, {self.s.get_inputs()[0].name: x})))


BACKEND = ToyBackend
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plugin")
    (d / "targets").mkdir()
    (d / "targets" / "toy.toml").write_text(PROFILE)
    (d / "toolchains" / "toytool").mkdir(parents=True)
    (d / "toolchains" / "toytool" / "__init__.py").write_text(textwrap.dedent(TOOLCHAIN))
    (d / "backends").mkdir()
    (d / "backends" / "toyrt.py").write_text(textwrap.dedent(BACKEND))
    return d


def _edgeseg(plugin: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGESEG_PLUGIN_PATH=str(plugin), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_target_from_a_plugin_folder_converts_and_runs(plugin, tmp_path):
    out = tmp_path / "toy"
    r = _edgeseg(plugin, "convert", str(MODEL), "--target", "toy", "--option", "copies=2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "edgeseg.json").read_text())
    assert (m["target"], m["runtime"], m["toolchain"]) == ("toy", "toyrt", {"toytool": "1.0"})
    assert m["quantization"]["label"] == "from the profile"  # the profile's value replaced the toolchain's default
    assert m["fidelity"]["cosine"] and min(m["fidelity"]["cosine"].values()) > 0.999  # ran through the plugin backend

    r = _edgeseg(plugin, "run", str(out), "--source", str(VAL_IMAGES), "--max-frames", "2", "--json", "-",
                 "-r", "threads=1")
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(frames) == 2 and any(f["instances"] for f in frames)


@pytest.mark.slow  # a doctor run (imports every toolchain)
def test_a_plugin_targets_options_are_listed_and_checked(plugin, tmp_path):
    r = _edgeseg(plugin, "convert", "--target", "toy", "--help-options")
    assert r.returncode == 0 and "copies=int" in r.stdout and "from the profile" in r.stdout
    r = _edgeseg(plugin, "convert", "--target", "toy", "--option", "copies=many", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "copies takes a int" in r.stderr
    assert not (tmp_path / "b").exists()
    r = _edgeseg(plugin, "doctor")
    assert r.returncode == 0 and "toy" in r.stdout


def test_without_the_plugin_path_the_target_is_unknown(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeseg", "convert", "--target", "toy", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                            if k != "EDGESEG_PLUGIN_PATH"})
    assert r.returncode == 2 and "unknown target 'toy'" in r.stderr
