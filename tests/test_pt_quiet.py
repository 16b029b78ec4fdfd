"""Importing an Ultralytics .pt runs Ultralytics offline and quiet: no AutoUpdate or pip, no
network, no settings written to the user's home, no colour codes, no hint at deleted temp files."""

import json
import subprocess
import sys

import pytest
from conftest import FIXTURES

PT = FIXTURES / "shapes-yolo11n-seg.pt"

# Runs the real `edgeseg convert` with an audit hook that records and refuses every network
# lookup or connection and every process start, as the MNN/OpenVINO guards do during their tools
# (pip is a process: refused and recorded).
BLOCKED = """
import atexit, json, os, sys
attempts = []
def hook(event, args):
    if event in ("socket.getaddrinfo", "socket.connect", "socket.gethostbyname", "subprocess.Popen", "os.system",
                 "os.exec", "os.posix_spawn"):
        attempts.append(f"{event} {str(args[:2])[:200]}")
        raise PermissionError(f"blocked {event} (test)")
atexit.register(lambda: open(os.environ["ATTEMPTS"], "w").write(json.dumps(attempts)))
sys.addaudithook(hook)
sys.argv = ["edgeseg", *sys.argv[1:]]
from edgeseg.cli import main
main()
"""


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow
def test_pt_import_in_a_fresh_home_with_network_and_pip_blocked(tmp_path):
    pytest.importorskip("ultralytics", reason="importing .pt needs ultralytics (AGPL, optional): "
                        "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu, "
                        "then pip install ultralytics")
    home, cwd, tmp, ckpt, out = (tmp_path / d for d in ("home", "cwd", "tmp", "ckpt", "out"))
    for d in (home, cwd, tmp, ckpt, out):
        d.mkdir()
    (ckpt / PT.name).write_bytes(PT.read_bytes())
    env = {"HOME": str(home), "TMPDIR": str(tmp), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path),
           "ATTEMPTS": str(tmp_path / "attempts.json"), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    r = subprocess.run([sys.executable, "-c", BLOCKED, "convert", str(ckpt / PT.name), "--trust-model", "--fp32",
                        "--out", str(out / "b")], check=False, capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    attempts = json.loads((tmp_path / "attempts.json").read_text())
    # local probes (ldconfig for a shared library, a GPU tool) were refused without harm; what
    # must never be tried is the network (DNS probe, usage events) or an install
    network = [a for a in attempts if a.startswith("socket.")]
    installs = [a for a in attempts if any(w in a for w in ("pip", "install", "'uv'", "curl", "wget", "git"))]
    assert network == [] and installs == [], attempts
    assert r.stdout == f"{out / 'b'}\n"  # Ultralytics' own chatter stays out of stdout
    for text in (r.stdout, r.stderr):
        assert "\x1b[" not in text and "Predict:" not in text and "edgeseg-convert-" not in text, text
    assert _tree(home) == [] and _tree(cwd) == [] and _tree(tmp) == []  # no settings.json, no leftovers
    assert _tree(ckpt) == [PT.name] and [p.name for p in out.iterdir()] == ["b"]


def test_install_hints_name_the_cpu_wheel_index():
    from edgeseg.convert.ultralytics_quiet import TORCH_INSTALL, ULTRALYTICS_INSTALL

    for hint in (TORCH_INSTALL, ULTRALYTICS_INSTALL):
        assert "--index-url https://download.pytorch.org/whl/cpu" in hint and "torch" in hint


def test_no_requirement_is_installed():
    """Ultralytics' check_requirements, as edgeseg runs it: True for what is there, False (and no
    pip) for what is missing, so an optional extra (onnxslim) is skipped, as offline."""
    from edgeseg.convert.ultralytics_quiet import _check_requirements

    assert _check_requirements(["numpy>=1.0", "onnx"]) is True
    assert _check_requirements("edgeseg-no-such-package>=1.0") is False
