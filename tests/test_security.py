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


@pytest.mark.slow  # torch and a conversion
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


# ---------------------------------------------------------------------------------------------
# The user's files: never deleted or truncated

def _manifest_time(folder: Path) -> str:
    return json.loads((folder / "edgeseg.json").read_text())["fidelity"]["created"]


@pytest.mark.slow  # a conversion (--force)
def test_convert_refuses_an_existing_out_before_any_work_and_force_replaces_a_bundle(fp32_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(fp32_bundle.path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = _one_line(cli("convert", "--fp32", "--out", str(out)))
    assert "already exists" in line and "--force" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = cli("convert", "--fp32", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    from edgeseg.bundle import Bundle

    Bundle.load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # nothing left beside it


@pytest.mark.slow  # a conversion
def test_default_bundle_folder_is_not_replaced_silently(tmp_path):
    r = cli("convert", "--fp32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = _one_line(cli("convert", "--fp32", cwd=tmp_path))
    assert "already exists" in line and "--force" in line


@pytest.mark.parametrize("extra", ["user file", "invalid manifest", "symlink"])
def test_force_never_replaces_a_user_folder_that_merely_holds_edgeseg_json(fp32_bundle, tmp_path, extra):
    out = tmp_path / "my project"
    shutil.copytree(fp32_bundle.path, out)
    if extra == "user file":
        (out / "thesis.docx").write_text("three years of work")
    elif extra == "invalid manifest":
        (out / "edgeseg.json").write_text('{"what": "a file of mine that happens to have this name"}')
    else:
        (out / "link").symlink_to(tmp_path)
    before = sorted(p.name for p in out.iterdir())
    line = _one_line(cli("convert", "--fp32", "--out", str(out), "--force"))
    assert "is not an edgeseg bundle" in line
    assert sorted(p.name for p in out.iterdir()) == before
    assert extra != "user file" or (out / "thesis.docx").read_text() == "three years of work"


def test_default_bundle_names_keep_sources_apart():
    from edgeseg.defaults import default_bundle_dir

    names = {default_bundle_dir(Path(f"m{s}"), "onnxruntime", "int8") for s in (".onnx", ".pt", ".torchscript", ".pth")}
    assert len(names) == 4
    assert default_bundle_dir(Path("a/m.onnx"), "onnxruntime", "int8") == Path("bundles/m_onnxruntime_int8")
    assert default_bundle_dir(Path("a/m.pt"), "onnxruntime", "int8") == Path("bundles/m-pt_onnxruntime_int8")


def test_convert_out_onto_the_models_folder_is_refused(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODEL, models / "m.onnx")
    for out in (models, models / "m.onnx"):
        line = _one_line(cli("convert", str(models / "m.onnx"), "--fp32", "--out", str(out), "--force"))
        assert "input" in line and "--out" in line, line
        assert (models / "m.onnx").read_bytes() == MODEL.read_bytes()


def _video(path: Path, n: int = 5) -> Path:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for f in sorted(VAL_IMAGES.iterdir())[:n]:
        w.write(cv2.resize(cv2.imread(str(f)), (160, 120)))
    w.release()
    return path


@pytest.mark.parametrize("flag,source_kind", [("--json", "image"), ("--save", "image"), ("--json", "video"),
                                              ("--save", "video"), ("--json", "folder member"),
                                              ("--json", "manifest")])
def test_run_output_onto_an_input_is_refused(fp32_bundle, tmp_path, flag, source_kind):
    bundle = tmp_path / "b"
    shutil.copytree(fp32_bundle.path, bundle)
    img = tmp_path / "photo.jpg"
    shutil.copy(sorted(VAL_IMAGES.iterdir())[0], img)
    src = {"image": img, "video": _video(tmp_path / "clip.mp4"), "folder member": tmp_path,
           "manifest": img}[source_kind]
    target = {"folder member": img, "manifest": bundle / "edgeseg.json"}.get(source_kind, src)
    before = target.read_bytes()
    line = _one_line(cli("run", str(bundle), "--source", str(src), flag, str(target)))
    assert flag in line and "input" in line, line
    assert target.read_bytes() == before


def test_save_into_a_folder_that_cannot_be_written_is_an_error(fp32_bundle, tmp_path):
    out = tmp_path / "out"
    first = sorted(VAL_IMAGES.iterdir())[0]
    (out / f"000000_{first.stem}.jpg").mkdir(parents=True)  # where the first picture goes: not writable
    line = _one_line(cli("run", str(fp32_bundle.path), "--source", str(VAL_IMAGES), "--save", str(out),
                         "--max-frames", "3"))
    assert "cannot write" in line and "--save" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_save_into_a_read_only_folder_is_an_error(fp32_bundle, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = cli("run", str(fp32_bundle.path), "--source", str(VAL_IMAGES), "--save", str(out), "--max-frames", "3")
    finally:
        out.chmod(0o755)
    _one_line(r)


def test_a_killed_conversion_leaves_nothing_the_next_one_does_not_remove(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    parent, tmpdir = tmp_path / "bundles", tmp_path / "tmp"
    parent.mkdir()
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", "convert", "--int8", "--out", str(parent / "a")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(".edgeseg-partial-" in q.name for q in parent.iterdir()) and time.monotonic() < deadline:
        assert p.poll() is None, "the conversion ended before it could be killed"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    left = sorted(q.name for q in parent.iterdir())
    assert any(".edgeseg-partial-" in n for n in left) and any(q.name.startswith("edgeseg-convert-")
                                                                for q in tmpdir.iterdir()), left
    # what a live conversion (this process) is building, and a folder of the user's, are kept
    live = parent / f".c.edgeseg-partial-{os.getpid()}-abc"
    mine = parent / "notes.edgeseg-partial-1-x"
    live.mkdir()
    mine.mkdir()
    r = subprocess.run([sys.executable, "-m", "edgeseg", "convert", "--fp32", "--out", str(parent / "b")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # (the dead conversion's lock file stays: the next conversion into "a" takes it over)
    assert sorted(q.name for q in parent.iterdir()) == sorted([".a.lock", "b", live.name, mine.name])
    assert list(tmpdir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Limits: every resource a hostile input could exhaust is bounded

def test_threads_are_capped_from_flag_option_and_manifest(fp32_bundle, tmp_path):
    from edgeseg.bundle import Bundle, max_threads
    from edgeseg.errors import EdgesegError

    too_many = str(max_threads() + 1)
    for args in (["--threads", too_many], ["-r", f"threads={too_many}"], ["--threads", "1000000000"]):
        line = _one_line(cli("run", str(fp32_bundle.path), "--source", str(VAL_IMAGES), "--max-frames", "1", *args))
        assert "threads" in line and f"0..{max_threads()}" in line, line
    import edgeseg  # the Python API opens runtimes through the same check

    with pytest.raises(EdgesegError, match=rf"0\.\.{max_threads()}"):
        edgeseg.load(fp32_bundle.path, threads=max_threads() + 1)
    b = tmp_path / "b"
    shutil.copytree(fp32_bundle.path, b)
    d = json.loads((b / "edgeseg.json").read_text())
    d["profile"].setdefault("runtime_options", {})["threads"] = 10**9
    (b / "edgeseg.json").write_text(json.dumps(d))
    with pytest.raises(EdgesegError, match="threads"):
        Bundle.load(b)


def _png_bomb(path: Path, side: int) -> Path:
    """A real PNG of side x side black gray pixels: a few hundred kB on disk, side**2 bytes decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.sources import read_image

    bomb = _png_bomb(tmp_path / "small.png", 20000)
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(EdgesegError, match=r"20000x20000 pixels is larger than the limit.*EDGESEG_MAX_IMAGE_PIXELS"):
        read_image(bomb)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".gif", ".tif"])
def test_pixel_limit_applies_to_every_format_and_can_be_changed(tmp_path, monkeypatch, suffix):
    import cv2
    import numpy as np

    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.sources import image_size, read_image

    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    p = tmp_path / f"x{suffix}"
    if suffix == ".gif":
        from PIL import Image

        Image.fromarray(img).save(p)
    else:
        assert cv2.imwrite(str(p), img)
    if suffix != ".tif":  # TIFF: no header reader here; the size is checked after decoding
        assert image_size(p.read_bytes()[:65536]) == (53, 37)
    monkeypatch.setenv("EDGESEG_MAX_IMAGE_PIXELS", str(53 * 37 - 1))
    with pytest.raises(EdgesegError, match="53x37 pixels is larger than the limit"):
        read_image(p)
    monkeypatch.setenv("EDGESEG_MAX_IMAGE_PIXELS", str(53 * 37))
    assert read_image(p).shape == (37, 53, 3)


def _alias_bomb() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\nval: images\nnames: *a9\n"


@pytest.mark.parametrize("text,expect", [
    (_alias_bomb(), "alias"),
    ("path: 5\nval: images\n", "'path' must be a folder path"),
    ("val: {a: 1}\n", "'val' must be a path"),
    ("val: images\nnames: 7\n", "'names' must be"),
    ("val: images\nnames: {x: a}\n", "'names' keys"),
    ("val: images\nnc: -3\n", "'nc'"),
    ("[1, 2]\n", "expected a mapping"),
    ("val: [images, 3]\n", "'val' must be a path"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "dataset"),
    (b"val: images\nnames: [caf\xe9]\n", "not UTF-8"),
])
def test_dataset_yaml_refusals_are_one_line(tmp_path, text, expect):
    from edgeseg.data import load_dataset
    from edgeseg.errors import EdgesegError

    p = tmp_path / "d.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(EdgesegError) as e:
        load_dataset(p)
    assert expect in str(e.value) and "\n" not in str(e.value) and str(p) in str(e.value)


def test_dataset_yaml_size_is_capped(tmp_path):
    from edgeseg.data import MAX_YAML_BYTES, load_dataset
    from edgeseg.errors import EdgesegError

    p = tmp_path / "d.yaml"
    p.write_text("val: images\nnames: [" + ", ".join(["x"] * (MAX_YAML_BYTES // 3)) + "]\n")
    with pytest.raises(EdgesegError, match="too large for a dataset file"):
        load_dataset(p)


@pytest.mark.parametrize("label,expect", [
    ("0 0.1 0.1 1e300 0.2 0.3 0.9", "within 0..1"),
    ("0 0.1 0.1 nan 0.2 0.3 0.9", "within 0..1"),
    ("0 0.1 0.1 -5 0.2 0.3 0.9", "within 0..1"),
    ("-1 0.1 0.1 0.5 0.2 0.3 0.9", "class must be >= 0"),
    ("0 0.1 0.1 0.5", "not a YOLO-seg label line"),
    (b"0 0.1 0.1 0.5 0.2 0.3 0.9 \xff", "not UTF-8"),
])
def test_label_values_are_checked_naming_the_file(tmp_path, label, expect):
    from edgeseg.errors import EdgesegError
    from edgeseg.eval import read_polygons

    p = tmp_path / "x.txt"
    p.write_bytes(label if isinstance(label, bytes) else label.encode())
    with pytest.raises(EdgesegError) as e:
        read_polygons(p, 640, 480)
    assert expect in str(e.value) and str(p) in str(e.value)


def test_a_source_folder_reads_only_regular_files(fp32_bundle, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = sorted(VAL_IMAGES.iterdir())[:3]
    for f in good:
        shutil.copy(f, src / f.name)
    os.mkfifo(src / "x.jpg")  # a read would block forever
    (src / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (src / "loop.jpg").symlink_to(src / "loop.jpg")
    (src / "zero.jpg").symlink_to("/dev/zero")  # a device never ends
    r = cli("run", str(fp32_bundle.path), "--source", str(src), "--json", str(tmp_path / "r.jsonl"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3
    for name in ("x.jpg", "dangling.jpg", "loop.jpg", "zero.jpg"):
        assert f"{name}: skipped" in r.stderr, (name, r.stderr)
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("index", ["99999999999999999999", "1024"])
def test_an_absurd_camera_index_is_one_line(fp32_bundle, index):
    line = _one_line(cli("run", str(fp32_bundle.path), "--camera", index))
    assert "not a camera index" in line


# ---------------------------------------------------------------------------------------------
# One line for every refusal: a damaged or hostile bundle

def _tiny_identity(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 320, 320])
    out = helper.make_tensor_value_info("something_else", TensorProto.FLOAT, [1, 3, 320, 320])
    m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["something_else"])], "g",
                                            [inp], [out]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))


@pytest.mark.parametrize("damage,expect", [
    ("unknown head type", "head.type"),
    ("names count", "num_classes"),
    ("quant scale nan", "quantization"),
    ("std zero", "input.std"),
    ("deep nesting", "nested too deeply"),
    ("huge shape", "implausible shape"),
    ("model swapped, hash rewritten", "does not belong to this manifest"),
])
def test_damaged_manifest_is_one_line_before_any_runtime_opens(fp32_bundle, tmp_path, damage, expect):
    from edgeseg.bundle import sha256_file

    b = tmp_path / "b"
    shutil.copytree(fp32_bundle.path, b)
    mp = b / "edgeseg.json"
    d = json.loads(mp.read_text())
    if damage == "unknown head type":
        d["head"]["type"] = "yolo-pose"
    elif damage == "names count":
        d["names"] = d["names"][:1]
    elif damage == "quant scale nan":
        d["outputs"][0]["quant"] = {"scale": float("nan"), "zero_point": 0}
    elif damage == "std zero":
        d["input"]["std"] = [0, 1, 1]
    elif damage == "huge shape":
        d["outputs"][0]["shape"] = [1, 2**40]
    elif damage == "model swapped, hash rewritten":
        _tiny_identity(b / d["model_files"][0])
        d["files"][d["model_files"][0]] = sha256_file(b / d["model_files"][0])
    text = json.dumps(d) if damage != "deep nesting" else "[" * 100_000 + "]" * 100_000
    mp.write_text(text)
    line = _one_line(cli("run", str(b), "--source", str(VAL_IMAGES), "--max-frames", "1"))
    assert expect in line, line
