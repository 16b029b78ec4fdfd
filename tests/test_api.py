"""The Python API as an Ultralytics user calls it: model(path | array | list), result.plot(),
result.to_json(), model.stream(folder), edgeseg.draw; and one function opening every source."""

import json
import re
import shutil
import subprocess
import sys
from typing import ClassVar

import cv2
import numpy as np
import pytest
from conftest import ROOT, VAL_IMAGES, cli

import edgeseg
from edgeseg.errors import EdgesegError
from edgeseg.runtime.model import Model, Result


def _images(n: int = 3):
    return sorted(VAL_IMAGES.iterdir())[:n]


def test_a_model_takes_a_path_an_array_or_a_list(fp32_model):
    a, b = _images(2)
    by_path, by_str, by_array = fp32_model(a), fp32_model(str(a)), fp32_model(cv2.imread(str(a)))
    assert isinstance(by_path, Result) and by_path.instances
    for other in (by_str, by_array):
        assert [(i.class_id, round(i.score, 5)) for i in other.instances] == \
               [(i.class_id, round(i.score, 5)) for i in by_path.instances]
    many = fp32_model([a, str(b), cv2.imread(str(b))])
    assert isinstance(many, list) and len(many) == 3
    n_b = len(fp32_model(b).instances)
    assert [len(r.instances) for r in many] == [len(by_path.instances), n_b, n_b]


def test_many_frames_are_streamed_not_called(fp32_model, tmp_path):
    for src in (VAL_IMAGES, str(VAL_IMAGES / "0000*.jpg")):
        with pytest.raises(EdgesegError, match=r"model\.stream"):
            fp32_model(src)
    with pytest.raises(EdgesegError, match="no such image file"):
        fp32_model(tmp_path / "missing.jpg")
    with pytest.raises(EdgesegError, match="BGR"):
        fp32_model(42)
    got = list(fp32_model.stream(str(VAL_IMAGES / "0000*.jpg")))
    assert [r.source for _, r in got] == [str(p) for p in sorted(VAL_IMAGES.glob("0000*.jpg"))]
    assert all(r.to_json()["source"] == r.source for _, r in got[:2])


def test_plot_and_to_json_match_what_run_saves(fp32_bundle, fp32_model, tmp_path):
    """result.plot() is the picture `run --save` writes (no FPS figure in either) and
    result.to_json() the line `run --json` writes: one drawing, one record."""
    img = _images(4)[3]
    saved, js = tmp_path / "seen.png", tmp_path / "r.jsonl"
    r = cli("run", str(fp32_bundle.path), "--source", str(img), "--save", str(saved), "--json", str(js))
    assert r.returncode == 0, r.stderr
    res = fp32_model(img)
    picture = res.plot()
    assert picture.shape == cv2.imread(str(img)).shape
    assert np.array_equal(cv2.imread(str(saved)), picture)
    assert np.array_equal(edgeseg.draw(cv2.imread(str(img)), res), picture)
    line = json.loads(js.read_text().splitlines()[0])
    rec = res.to_json()
    assert {k: v for k, v in rec.items() if k != "time"} == {k: v for k, v in line.items() if k != "time"}
    # asked for, the figure is there
    r = cli("run", str(fp32_bundle.path), "--source", str(img), "--save", str(tmp_path / "fps.png"), "--overlay-fps")
    assert r.returncode == 0, r.stderr
    assert not np.array_equal(cv2.imread(str(tmp_path / "fps.png")), picture)


class _SensorCamera:
    """Stands in for the IMX500 AI Camera (a hardware boundary: no such sensor on this machine)."""

    opened: ClassVar[list] = []

    def __init__(self, bundle, width=None, height=None, fps=None, aspect="preserve", on_event=None):
        type(self).opened.append((width, height, fps, aspect))


class _SensorBackend:
    camera = _SensorCamera

    def close(self):
        pass


def test_the_api_and_the_cli_open_sources_with_one_function(fp32_bundle, monkeypatch, tmp_path):
    """An IMX500 bundle streamed from the API with "pi" or 0 opens the sensor that runs it (it
    used to open a plain camera and fail), as `run --camera` does, through the same function."""
    model = Model(fp32_bundle, _SensorBackend())
    for spec in (0, "0", "pi"):
        assert isinstance(model.open_source(spec, 640, 480, 30), _SensorCamera)
    assert _SensorCamera.opened == [(640, 480, 30, "preserve")] * 3
    assert not isinstance(model.open_source(str(VAL_IMAGES)), _SensorCamera)  # a folder is a folder

    from edgeseg.cli import main
    from edgeseg.runtime.sources import open_source

    calls = []

    def recording(self, spec, *a, **kw):
        calls.append(spec)
        return open_source(str(VAL_IMAGES / "00000.jpg"))

    monkeypatch.setattr(Model, "open_source", recording)
    with pytest.raises(SystemExit) as e:
        main(["run", str(fp32_bundle.path), "--camera", "0", "--max-frames", "1"])
    assert e.value.code == 0 and calls == ["0"]


def test_readme_python_block_runs_as_written(int8_bundle, tmp_path):
    """The README's Python API block, executed as it stands, against the demo bundle (at the
    path the block names) with a real picture as photo.jpg and a folder as photos/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"Python API[^\n]*\n\n```python\n(.*?)```", text, re.DOTALL).group(1)
    bundle_path = re.search(r'edgeseg\.load\("([^"]+)"\)', block).group(1)
    (tmp_path / bundle_path).parent.mkdir(parents=True)
    shutil.copytree(int8_bundle.path, tmp_path / bundle_path)
    for name in re.findall(r'"([\w./-]+\.jpg)"', block):
        shutil.copy(_images(1)[0], tmp_path / name)
    for folder in re.findall(r'stream\("([\w./-]+)/"\)', block):
        (tmp_path / folder).mkdir()
        for p in _images(3):
            shutil.copy(p, tmp_path / folder)
    probe = ("\nassert result.instances and picture.shape == frame.shape\n"
             "assert len(results) == 2 and record['instances']\nprint('ran')\n")
    r = subprocess.run([sys.executable, "-c", block + probe], check=False, capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ran", r.stderr
