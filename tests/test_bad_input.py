"""Bad input: one line on stderr naming the file and the fix, exit status 2, no bundle left behind."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODEL, cli
from onnx import TensorProto, helper


def _tiny_onnx(path: Path, out_shape, in_shape=(1, 3, 32, 32), op="Identity", names=None):
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, list(in_shape))
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, list(out_shape))
    if op == "Flatten":
        node = helper.make_node("Flatten", ["images"], ["out"], axis=1)
    else:
        node = helper.make_node("Identity", ["images"], ["out"])
    m = helper.make_model(helper.make_graph([node], "g", [inp], [out]), opset_imports=[helper.make_opsetid("", 17)])
    if names:
        e = m.metadata_props.add()
        e.key, e.value = "names", names
    onnx.save(m, str(path))
    return path


def _external_weights_onnx(folder: Path, location: str) -> Path:
    """A model whose weights live in a separate file (as large exports save them), at ``location``."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.ones((1, 3, 32, 32), np.float32), "w")
    set_external_data(w, location)
    w.ClearField("raw_data")
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 32, 32])
    g = helper.make_graph([helper.make_node("Add", ["images", "w"], ["out"])], "g", [inp], [out], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(folder / "m.onnx"))
    return folder / "m.onnx"


def _calib(folder: Path, n: int, bad: bool = False) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 60, 3), i * 10 % 255, np.uint8))
    if bad:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def case(tmp: Path, name: str):
    out = tmp / "out" / "bundle"
    if name == "missing file":
        return ["convert", str(tmp / "nope.onnx"), "--out", str(out)], "no such file"
    if name == "empty file":
        (tmp / "e.onnx").write_bytes(b"")
        return ["convert", str(tmp / "e.onnx"), "--out", str(out)], "file is empty"
    if name == "not a model":
        (tmp / "t.onnx").write_text("hello, I am a text file")
        return ["convert", str(tmp / "t.onnx"), "--out", str(out)], "not a readable ONNX model"
    if name == "truncated model":
        data = MODEL.read_bytes()
        (tmp / "half.onnx").write_bytes(data[: len(data) // 2])
        return ["convert", str(tmp / "half.onnx"), "--out", str(out)], "ONNX"
    if name == "external weights missing":
        m = _external_weights_onnx(tmp / "ext", "m.onnx.data")
        return (["convert", str(m), "--out", str(out), "--fp32"],
                "its weights are in m.onnx.data, which is not next to it")
    if name == "external weights outside the folder":
        (tmp / "secret.bin").write_bytes(np.ones(3 * 32 * 32, np.float32).tobytes())
        m = _external_weights_onnx(tmp / "ext", "../secret.bin")
        return ["convert", str(m), "--out", str(out), "--fp32"], "points outside the model's folder"
    if name == "folder instead of model":
        return ["convert", str(tmp), "--out", str(out)], "is a folder"
    if name == "unknown head":
        m = _tiny_onnx(tmp / "flat.onnx", (1, 3072), op="Flatten")
        return ["convert", str(m), "--out", str(out), "--fp32"], "unknown head"
    if name == "wrong input shape":
        m = _tiny_onnx(tmp / "gray.onnx", (1, 1, 32, 32), in_shape=(1, 1, 32, 32))
        return ["convert", str(m), "--out", str(out), "--fp32"], "needs [1,3,H,W]"
    if name == "dynamic input":
        m = _tiny_onnx(tmp / "dyn.onnx", ("N", 3, "H", "W"), in_shape=("N", 3, "H", "W"))
        return ["convert", str(m), "--out", str(out), "--fp32"], "--imgsz"
    if name == "export with NMS inside":  # what `yolo export nms=True` records (its output is [1, 300, 6+nm])
        m = onnx.load(str(MODEL))
        next(p for p in m.metadata_props if p.key == "args").value = "{'batch': 1, 'nms': True, 'dynamic': False}"
        onnx.save(m, str(tmp / "nms.onnx"))
        return ["convert", str(tmp / "nms.onnx"), "--out", str(out), "--fp32"], "NMS inside the model"
    if name == "class-name count mismatch":
        return ["convert", str(MODEL), "--names", "a,b,c", "--out", str(out), "--fp32"], "fix --names"
    if name == "names file missing":
        return ["convert", str(MODEL), "--fp32", "--names", "classes.txt", "--out", str(out)], \
            "classes.txt: no such names file"
    if name == "empty calibration folder":
        (tmp / "empty").mkdir()
        return ["convert", "--calib", str(tmp / "empty"), "--out", str(out)], "found 0 images"
    if name == "too few calibration images":
        return ["convert", "--calib", str(_calib(tmp / "few", 3)), "--out", str(out)], "at least 8"
    if name == "calibration video too short":
        import cv2

        w = cv2.VideoWriter(str(tmp / "short.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
        for i in range(3):
            w.write(np.full((48, 64, 3), 40 * i, np.uint8))
        w.release()
        return ["convert", str(MODEL), "--calib", str(tmp / "short.mp4"), "--out", str(out)], \
            "the video has 3 frames, INT8 calibration needs at least 8"
    if name == "image that does not decode":
        return ["convert", "--calib", str(_calib(tmp / "bad", 10, bad=True)), "--out", str(out)], "cannot decode"
    if name == "unknown target":
        return ["convert", "--target", "toaster", "--out", str(out)], "unknown target 'toaster'"
    if name == "precision the target lacks":
        return ["convert", "--target", "onnxruntime", "--int8", "--fp16", "--out", str(out)], "only one of"
    if name == "not a bundle":
        return ["run", str(tmp), "--source", str(tmp)], "not an edgeseg bundle"
    if name == "no camera":
        return ["run", str(_bundle_dir()), "--camera", "7"], "no camera found"
    if name == "JSON path is a folder":
        (tmp / "results").mkdir()
        scenes = str(Path(__file__).parent.parent / "edgeseg" / "assets" / "shapes" / "val" / "images" / "0000*.jpg")
        return ["run", str(_bundle_dir()), "--source", scenes, "--json", str(tmp / "results")], \
            "results: Is a directory; pass a file path"
    if name == "a file where a folder must go":
        (tmp / "taken").write_text("not a folder")
        return ["convert", str(MODEL), "--fp32", "--out", str(tmp / "taken" / "b")], \
            "taken: is a file, and the bundle"
    if name == "missing source":
        return ["run", str(_bundle_dir()), "--source", str(tmp / "nothing.mp4")], "no such file or folder"
    raise KeyError(name)


_BUNDLE = []


def _bundle_dir():
    return _BUNDLE[0]


CASES = ["missing file", "empty file", "not a model", "truncated model", "external weights missing",
         "external weights outside the folder", "folder instead of model", "unknown head", "wrong input shape",
         "dynamic input", "export with NMS inside", "class-name count mismatch", "names file missing",
         "empty calibration folder", "too few calibration images", "calibration video too short",
         "image that does not decode", "unknown target", "precision the target lacks", "not a bundle", "no camera",
         "missing source", "JSON path is a folder", "a file where a folder must go"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, tmp_path, fp32_bundle):
    _BUNDLE[:] = [fp32_bundle.path]
    args, phrase = case(tmp_path, name)
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and phrase in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.parametrize("args", [["run", "--source", ".", "--conf", "25"],
                                  ["run", "--source", ".", "--max-frames", "0"],
                                  ["eval", "--iou", "1.5"], ["convert", "--imgsz", "0"], ["bench", "--frames", "0"]])
def test_out_of_range_values_are_refused_before_anything_runs(args, tmp_path):
    """--conf 25 (meaning 25 %) used to run and find nothing; --max-frames 0 ran forever."""
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"error: invalid value for '{args[-2]}'"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, phrase", [(["run", "--bogus"], "no such option: --bogus"),
                                          (["frob"], "no such command 'frob'"),
                                          (["convert", "--out"],
                                           "option '--out' requires an argument; see 'edgeseg convert --help'")])
def test_usage_errors_are_one_line_like_edgesegs_own(args, phrase, tmp_path):
    """typer's framed box was seven lines that a log or a calling script had to untangle."""
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and phrase in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("flag, hint", [("--bogus", None), ("--max-frame", "--max-frames"), ("--camra", "--camera")])
def test_a_mistyped_flag_is_hinted_only_with_a_near_miss(flag, hint, tmp_path):
    """click's own hint for --bogus was --iou."""
    r = cli("run", flag, cwd=tmp_path)
    assert r.returncode == 2 and f"no such option: {flag}" in r.stderr, r.stderr
    if hint:
        assert f"did you mean {hint}?" in r.stderr, r.stderr
    else:
        assert "mean" not in r.stderr and "--iou" not in r.stderr, r.stderr


def test_no_arguments_prints_help_not_an_error(tmp_path):
    r = cli(cwd=tmp_path)
    assert r.returncode == 0 and "convert" in r.stdout and "run" in r.stdout, (r.stdout, r.stderr)


def test_install_hints_name_the_source_this_edgeseg_came_from(tmp_path):
    """`pip install "edgeseg[ncnn]"` fails for an edgeseg installed from a clone (the name is not
    on an index), so a missing-toolchain message names the clone, or the copied folder."""
    import json

    from conftest import ROOT

    from edgeseg.install import pip_extra, source_of

    assert pip_extra("ncnn") == f'pip install -e "{ROOT}[ncnn]"'  # the tests run from a checkout
    site = tmp_path / "site-packages"
    (site / "edgeseg").mkdir(parents=True)
    copied = json.dumps({"url": "file:///home/pi/edgeseg%20src", "dir_info": {}})
    assert source_of(site, copied) == ("/home/pi/edgeseg src", False)
    assert source_of(site, json.dumps({"url": "file:///w/edgeseg", "dir_info": {"editable": True}})) == (
        "/w/edgeseg", True)
    assert source_of(site, None) is None  # from an index
    assert source_of(site, json.dumps({"url": "https://example.org/edgeseg-0.1.0.tar.gz", "archive_info": {}})) is None
