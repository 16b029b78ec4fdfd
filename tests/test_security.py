"""Security and data safety (issue 23): untrusted models, the user's files, hostile inputs.

Every test here is an attack or a careless-user mistake that once went through; each asserts what
must not happen (a file written by a model, a user folder deleted, an input truncated) as well as
the one-line refusal.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import MODEL, VAL_IMAGES, cli


def _one_line(r, code: int = 2) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr[-3000:])
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Untrusted models: nothing of a model file runs without --trust-model

def _torchscript_that_writes(path: Path, victim: Path) -> Path:
    """A TorchScript model whose forward writes ``victim`` (through a shared memory map of the file),
    as a stranger's model file could: loading and tracing it runs its code."""
    torch = pytest.importorskip("torch", reason="TorchScript needs torch (test-only)")

    class Evil(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.victim = str(victim)

        def forward(self, x):
            t = torch.from_file(self.victim, shared=True, size=4, dtype=torch.uint8)
            t.fill_(65)
            return x[:, :1] + t.sum().float() * 0

    torch.jit.script(Evil()).save(str(path))
    return path


@pytest.mark.parametrize("suffix", [".torchscript", ".ts", ".pt", ".pth"])
def test_torchscript_runs_no_code_without_trust_model(tmp_path, suffix):
    victim = tmp_path / "written_by_the_model.txt"
    model = _torchscript_that_writes(tmp_path / f"evil{suffix}", victim)
    r = cli("convert", str(model), "--fp32", "--imgsz", "32", "--out", str(tmp_path / "b"))
    line = _one_line(r)
    assert "--trust-model" in line and "TorchScript" in line, line
    assert not victim.exists() and not (tmp_path / "b").exists()


def test_torchscript_code_is_what_trust_model_allows(tmp_path):
    """The same file with --trust-model is loaded and run: the gate is what stopped it above."""
    victim = tmp_path / "written_by_the_model.txt"
    model = _torchscript_that_writes(tmp_path / "evil.torchscript", victim)
    cli("convert", str(model), "--fp32", "--imgsz", "32", "--head", "semantic", "--trust-model",
        "--out", str(tmp_path / "b"))
    assert victim.exists() and victim.read_bytes()[:1] == b"A"


def test_onnx_is_data_only_and_external_data_stays_in_its_folder(tmp_path):
    """ONNX needs no --trust-model; its external weights are read only from inside the model's folder,
    also through a symlink that points out of it."""
    from test_bad_input import _external_weights_onnx

    import numpy as np

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(3 * 32 * 32, np.float32).tobytes())
    m = _external_weights_onnx(tmp_path / "ext", "w.bin")
    (tmp_path / "ext" / "w.bin").symlink_to(secret)
    line = _one_line(cli("convert", str(m), "--fp32", "--out", str(tmp_path / "b")))
    assert "outside the model's folder" in line and not (tmp_path / "b").exists()
