"""Unusual files, paths and runs: every one either works or fails with one clear line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASSETS, MODEL, VAL_IMAGES, cli


def _calib_variants(folder: Path) -> Path:
    """Gray, 16-bit, alpha, CMYK (JPEG and TIFF), tiny and huge images: all must calibrate."""
    from PIL import Image

    folder.mkdir(parents=True)
    src = sorted((ASSETS / "shapes" / "calib" / "images").iterdir())
    for i, f in enumerate(src[:14]):
        img = cv2.imread(str(f))
        kind = i % 7
        if kind >= 5:  # print-shop CMYK, as cameras never write but photo libraries do
            Image.fromarray(img[:, :, ::-1]).convert("CMYK").save(folder / f"{i}_cmyk.{'jpg' if kind == 5 else 'tif'}")
            continue
        if kind == 0:
            cv2.imwrite(str(folder / f"{i}_gray.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        elif kind == 1:
            cv2.imwrite(str(folder / f"{i}_16bit.png"), img.astype(np.uint16) * 257)
        elif kind == 2:
            cv2.imwrite(str(folder / f"{i}_alpha.png"), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
        elif kind == 3:
            cv2.imwrite(str(folder / f"{i}_huge.jpg"), cv2.resize(img, (6000, 4000)))
        else:
            cv2.imwrite(str(folder / f"{i}_tiny.bmp"), cv2.resize(img, (7, 5)))
    return folder


@pytest.mark.slow  # a full INT8 conversion (about 20 CPU seconds)
def test_calibration_accepts_gray_16bit_alpha_cmyk_huge_and_tiny(tmp_path):
    calib = _calib_variants(tmp_path / "calib")
    r = cli("convert", "--calib", str(calib), "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "b" / "edgeseg.json").read_text())
    assert m["quantization"]["calibration"]["available"] == 14


@pytest.mark.slow  # a full INT8 conversion and a run
def test_non_ascii_paths_everywhere(tmp_path):
    d = tmp_path / "modèles 模型"
    d.mkdir()
    shutil.copy(MODEL, d / "façade.onnx")
    calib = d / "étalonnage"
    shutil.copytree(ASSETS / "shapes" / "calib" / "images", calib)
    out = d / "bündel"
    r = cli("convert", str(d / "façade.onnx"), "--calib", str(calib), "--out", str(out))
    assert r.returncode == 0, r.stderr
    vid = d / "vidéo.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 320))
    for f in sorted(VAL_IMAGES.iterdir())[:5]:
        w.write(cv2.imread(str(f)))
    w.release()
    r = cli("run", str(out), "--source", str(vid), "--json", str(d / "résultats.jsonl"),
            "--save", str(d / "sortie.mp4"))
    assert r.returncode == 0, r.stderr
    assert len((d / "résultats.jsonl").read_text(encoding="utf-8").splitlines()) == 5


@pytest.mark.slow  # two conversions at once
def test_two_conversions_into_one_folder(tmp_path):
    out = tmp_path / "b"
    procs = [subprocess.Popen([sys.executable, "-m", "edgeseg", "convert", "--fp32", "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes[0] == 0
    if codes[1] != 0:  # the loser says why; it did not touch the winner's bundle
        assert any("another conversion" in e or "already exists" in e for c, e in results if c)
    from edgeseg.bundle import Bundle

    Bundle.load(out)  # whole and hash-consistent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / ".b.lock").write_text("999999")
    r = cli("convert", "--fp32", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / ".b.lock").exists()


@pytest.mark.slow  # three conversions
def test_a_bundle_left_aside_by_a_killed_overwrite_is_put_back(tmp_path, fp32_bundle):
    """--force moves the old bundle to .NAME.old.PID before renaming the new one in: a kill -9 between
    the two renames leaves no bundle at NAME. The next conversion puts the old one back (it is the
    user's last good bundle), or, when a new one is in place, removes the leftover."""
    import shutil

    from edgeseg.bundle import Bundle

    aside = tmp_path / ".b.old.999999"
    shutil.copytree(fp32_bundle.path, aside)
    (tmp_path / "c").mkdir()
    r = cli("convert", "--fp32", "--out", str(tmp_path / "c" / "x"))  # another folder: b is not touched
    assert r.returncode == 0, r.stderr
    assert aside.exists()
    r = cli("convert", "--fp32", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "already exists" in r.stderr, r.stderr  # b came back: not overwritten
    assert not aside.exists()
    assert Bundle.load(tmp_path / "b").manifest.to_json() == fp32_bundle.manifest.to_json()
    shutil.copytree(fp32_bundle.path, aside)  # now with a bundle in place at b: the leftover goes
    r = cli("convert", "--fp32", "--force", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


@pytest.mark.slow  # two processes building a venv
def test_two_conversions_creating_one_toolchain_env_at_once(tmp_path):
    """On a new machine two conversions may start together and both need the same toolchain env:
    one builds it, the other waits and uses it (no wiping of a half-built env)."""
    script = ("import sys; from edgeseg.convert.envs import EnvSpec; "
              "print(EnvSpec('probe', (('pip',),)).create(log=lambda m: print(m, flush=True)))")
    env = dict(os.environ, EDGESEG_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [c for c, _, _ in outs] == [0, 0], outs
    pythons = {o.strip().splitlines()[-1] for _, o, _ in outs}
    assert len(pythons) == 1 and Path(pythons.pop()).exists()
    said = " ".join(o for _, o, _ in outs)
    assert said.count("creating the probe toolchain environment") == 1 and "waiting for another edgeseg" in said
    (envdir,) = [p for p in (tmp_path / "cache" / "envs").iterdir() if p.is_dir()]
    assert (envdir / "install.log").read_text().count("$ pip install pip\n") == 1


@pytest.mark.slow  # a 2000-frame video
def test_jsonl_stays_valid_after_kill(tmp_path, fp32_bundle):
    vid = tmp_path / "long.mp4"
    w = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 30, (320, 320))
    frames = [cv2.imread(str(f)) for f in sorted(VAL_IMAGES.iterdir())[:20]]
    for i in range(2000):
        w.write(frames[i % 20])
    w.release()
    js = tmp_path / "out.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "edgeseg", "run", str(fp32_bundle.path), "--source", str(vid),
                          "--json", str(js)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not js.exists() or js.stat().st_size < 20000):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    lines = js.read_text().splitlines()
    assert len(lines) > 5
    for ln in lines:  # every line written is whole
        json.loads(ln)


def _truncated_video(path: Path, fourcc: str) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, (320, 320))
    for f in sorted(VAL_IMAGES.iterdir())[:30]:
        w.write(cv2.imread(str(f)))
    w.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def test_truncated_video_ends_cleanly(tmp_path, fp32_bundle):
    # MP4 keeps its index (moov) at the end: cut short, the container cannot be opened at all
    vid = _truncated_video(tmp_path / "v.mp4", "mp4v")
    r = cli("run", str(fp32_bundle.path), "--source", str(vid), "--json", str(tmp_path / "o.jsonl"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last == f"error: {vid}: cannot open this video (corrupt or codec missing); " \
                                          "re-encode it as H.264 MP4", r.stderr
    assert not (tmp_path / "o.jsonl").exists()
    # AVI (MJPEG) is read frame by frame: every frame OpenCV still decodes is processed, then it ends
    vid = _truncated_video(tmp_path / "v.avi", "MJPG")
    cap = cv2.VideoCapture(str(vid))
    decodable = 0
    while cap.read()[0]:
        decodable += 1
    cap.release()
    r = cli("run", str(fp32_bundle.path), "--source", str(vid), "--json", str(tmp_path / "o.jsonl"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = [json.loads(ln) for ln in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert 10 < decodable < 30 and [x["frame"] for x in lines] == list(range(decodable)), (decodable, len(lines))
    assert f"{decodable} frames in" in r.stdout


def test_corrupt_image_in_a_folder_is_skipped_with_a_warning(tmp_path, fp32_bundle):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted(VAL_IMAGES.iterdir())[:3]:
        shutil.copy(f, folder)
    (folder / "00001b.jpg").write_bytes(b"\xff\xd8 broken")
    r = cli("run", str(fp32_bundle.path), "--source", str(folder), "--json", str(tmp_path / "o.jsonl"))
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    assert "cannot decode" in r.stderr


def test_disk_full_while_writing_the_bundle(tmp_path):
    """A file-size limit makes every write past 1 MB fail, as a full disk does (EFBIG for ENOSPC)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out" / "b"
    r = subprocess.run([sys.executable, "-m", "edgeseg", "convert", "--fp32", "--out", str(out)], capture_output=True,
                       text=True, preexec_fn=limit, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "no space left" in lines[0], r.stderr
    assert str(out.parent) in lines[0]  # names where it was writing
    assert not out.exists() and (not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()))


@pytest.mark.toolchain  # Sony's MCT in its env
def test_toolchain_failing_mid_way_leaves_no_bundle_and_keeps_its_log(tmp_path):
    """Sony's toolchain (real, in its env) is handed a model with an operator it cannot take: the
    worker fails after the env is up and MCT is loaded. One line points at the kept log."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.convert.toolchains.imx500 import Imx500Toolchain

    av = Imx500Toolchain.availability()
    if not av.installed:
        pytest.skip(f"{av.detail}; install with: {av.install}")
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["images", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Erf", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["logits"])]
    g = helper.make_graph(nodes, "erf", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 64, 64])], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "erf.onnx"))
    out = tmp_path / "bundles" / "erf"
    r = cli("convert", str(tmp_path / "erf.onnx"), "--target", "imx500", "--calib-images", "8", "--out", str(out),
            timeout=900)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: ") and "toolchain failed" in last, r.stderr
    assert "ONNX operator Erf is not supported" in last and "see this log, which is kept" in last
    log = Path(last.split("error: ", 1)[1].split(":", 1)[0])
    assert log.is_file() and "Traceback" in log.read_text()
    assert not out.exists() and [p for p in out.parent.iterdir()] == [log]


def test_a_disk_filling_up_during_a_run_stops_the_files_cleanly(tmp_path, fp32_bundle, monkeypatch):
    """A week-long `run --save --json` on a board: when the disk's free space falls under the
    margin, each file sink stops (once, said once), what was written stays playable and valid, and
    the run ends since nothing is left to write. statvfs is the only stand-in: this machine's
    disk is not full."""
    from collections import namedtuple

    from edgeseg.runtime import sinks
    from edgeseg.runtime.model import Model
    from edgeseg.runtime.pipeline import run_pipeline
    from edgeseg.runtime.sources import open_source

    usage = namedtuple("usage", "total used free")
    calls = {"n": 0}

    def disk_usage(path):
        calls["n"] += 1
        return usage(2**34, 2**34, 2**30 if calls["n"] <= 20 else 40 * 2**20)  # 1 GB free, then 40 MB

    monkeypatch.setattr(sinks.shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(sinks, "SPACE_CHECK_S", 0.0)
    events: list[str] = []
    video, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    outs = [sinks.make_save_sink(video, 10, on_event=events.append), sinks.JsonlSink(js, "scenes", events.append)]
    model = Model.load(fp32_bundle.path)
    st = run_pipeline(model, open_source(str(VAL_IMAGES)), outs, annotate=True)
    n_images = len(list(VAL_IMAGES.iterdir()))
    assert 5 < st.frames < n_images  # the run ended when both files had stopped
    assert len(events) == 2 and all("MB left on its disk; stopped writing it at frame" in e for e in events), events
    lines = js.read_text().splitlines()
    assert 5 < len(lines) < n_images and all(json.loads(ln) for ln in lines)
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    assert 5 < n < n_images  # finished when it stopped: the frames recorded until then play
