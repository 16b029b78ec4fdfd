"""The commands the README and the examples show use flags the command line really has."""

import re
import shlex

import pytest
from conftest import ROOT
from typer.main import get_command

from edgeseg.cli import app

DOCS = [ROOT / "README.md", ROOT / "calibration" / "README.md", *sorted((ROOT / "examples").rglob("*.md")),
        *sorted((ROOT / "examples").rglob("*.sh"))]


def _commands():
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(r"edgeseg (convert|run|eval|bench|doctor)\b([^`#|]*)", line):
                yield f"{doc.relative_to(ROOT)}:{n}", m.group(1), m.group(2)


CASES = list(_commands())


def test_the_docs_show_commands():
    assert len(CASES) > 30 and {c for _, c, _ in CASES} == {"convert", "run", "eval", "bench", "doctor"}


@pytest.mark.parametrize("where,command,rest", CASES, ids=[w for w, _, _ in CASES])
def test_documented_flags_exist(where, command, rest):
    sub = get_command(app).commands[command]
    flags = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
    try:
        words = shlex.split(rest.replace("\\", " "))
    except ValueError:  # an unbalanced quote in prose: the flags are still whitespace-separated
        words = rest.split()
    used = {w.split("=")[0] for w in words if re.fullmatch(r"--?[a-z][a-z0-9-]*(=.*)?", w)}
    assert used <= flags, f"{where}: `edgeseg {command}` has no {sorted(used - flags)}"


def test_the_embedding_example_runs_as_written(fp32_bundle, tmp_path):
    """examples/onnxruntime-camera is the Python API as an application uses it; run it for real
    (on the sample scenes in place of a camera) so that it cannot drift from the API."""
    import subprocess
    import sys

    from conftest import VAL_IMAGES

    r = subprocess.run([sys.executable, str(ROOT / "examples" / "onnxruntime-camera" / "run_on_camera.py"),
                        str(fp32_bundle.path), "--camera", str(VAL_IMAGES), "--frames", "3"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["frame 0", "frame 1", "frame 2"], r.stdout
    assert all("of the picture covered" in ln for ln in lines)
    assert any(f"'{n}': " in r.stdout for n in fp32_bundle.manifest.names), r.stdout  # objects counted


@pytest.mark.parametrize("script", sorted((ROOT / "examples").rglob("*.sh")), ids=lambda p: p.parent.name)
def test_board_scripts_install_edgeseg_from_their_clone(script):
    """edgeseg is not on a package index: `pip install edgeseg` on a board fails, or installs
    whatever else has taken the name. Each script installs the clone it sits in."""
    import subprocess

    text = script.read_text()
    pips = [ln for ln in text.splitlines() if "pip install" in ln]
    assert pips and all('"$SRC' in ln and not re.search(r"install[^#]*\bedgeseg\b", ln) for ln in pips), pips
    if "--system-site-packages" in text:  # picamera2 from the OS: numpy 2 in the venv would break it
        assert all('"numpy==$NUMPY"' in ln for ln in pips), pips
    line = next(ln for ln in text.splitlines() if ln.startswith("SRC="))
    r = subprocess.run(["bash", "-c", f"{line}\necho \"$SRC\"", str(script)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.stdout.strip() == str(ROOT), (r.stdout, r.stderr)
