"""``edgeseg bench MODEL --targets ...``: convert, score and time every target x precision in one table."""

import json
import os
import subprocess
import sys

import cv2
import pytest
from conftest import DATA_YAML, MODEL, VAL_IMAGES


def _bench(tmp_path, *args):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", EDGESEG_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "edgeseg", "bench", str(MODEL), "--data", str(DATA_YAML),
                           "--source", str(VAL_IMAGES), "--frames", "5", "--threads", "1", *args],
                          check=False, capture_output=True, text=True, env=env, timeout=1200)


@pytest.mark.slow
def test_bench_model_converts_scores_and_times_each_target_and_reuses_bundles(tmp_path):
    js, png = tmp_path / "rows.json", tmp_path / "plot.png"
    # rknn with an unknown SoC fails at once (before its vendor environment is built): the run must
    # go on and show that row's error; rknn offers no fp32, so only its fp16 row is attempted
    args = ("--targets", "onnxruntime,rknn", "--precisions", "fp32,fp16", "--platform", "nosuch-soc",
            "--json", str(js), "--plot", str(png))
    r = _bench(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    rows = json.loads(js.read_text())["rows"]
    assert [(x["target"], x["precision"]) for x in rows] == [("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                                                             ("rknn", "fp16")]
    ort32, ort16, rk = rows
    for row in (ort32, ort16):
        assert row["error"] is None, row
        assert 0.5 < row["mask_map50_95"] <= 1 and row["size_mb"] > 1
        assert 0 < row["inference_ms"] <= row["end_to_end_ms"] and row["decode_ms"] > 0
        assert row["pipeline_fps"] > 0 and row["peak_rss_mb"] > 0 and row["best_threads"] == 1
        assert row["fidelity"] > 0.99  # FP32/FP16 follow the source
    assert ort32["drop"] == 0.0 and abs(ort16["drop"]) < 0.01
    assert ort16["size_mb"] < ort32["size_mb"] * 0.7
    assert "unknown RKNN platform 'nosuch-soc'" in rk["error"] and rk["mask_map50_95"] is None
    assert "error: unknown RKNN platform" in r.stdout  # under its row in the table
    assert "rknn offers int8, fp16; fp32 left out" in r.stderr
    assert cv2.imread(str(png)) is not None
    # every bundle lives in the cache, keyed on model + target + precision + options
    assert all(x["bundle"].startswith(str(tmp_path / "cache" / "bench")) for x in (ort32, ort16))

    r2 = _bench(tmp_path, *args)
    assert r2.returncode == 0, r2.stderr
    assert r2.stderr.count("reusing") == 2 and "onnxruntime fp32: converting" not in r2.stderr, r2.stderr
    # another calibration option is another bundle
    r3 = _bench(tmp_path, "--targets", "onnxruntime", "--precisions", "fp32", "--calib-images", "9")
    assert r3.returncode == 0 and "converting" in r3.stderr, r3.stderr


def test_bench_model_bad_input_is_one_line(tmp_path):
    r = _bench(tmp_path, "--targets", "nosuch")
    assert r.returncode == 2 and r.stderr.startswith("error: --targets nosuch: no such target"), r.stderr
    r = _bench(tmp_path, "--targets", "onnxruntime", "--json", str(tmp_path))
    assert r.returncode == 2 and "is a folder" in r.stderr, r.stderr


def test_table_json_and_plot_from_rows(tmp_path):
    """The collation alone: a timed row, a simulator-scored row, a failed row."""
    from edgeseg import benchmark

    rows = [{"target": "onnxruntime", "precision": "fp32", "size_mb": 10.9, "mask_map50_95": 0.82, "fidelity": 1.0,
             "preprocess_ms": 0.2, "inference_ms": 16.0, "decode_ms": 1.0, "end_to_end_ms": 17.3, "pipeline_fps": 55.0,
             "best_threads": 2, "peak_rss_mb": 160.0, "timed": True, "backend": "onnxruntime"},
            {"target": "rknn", "precision": "int8", "size_mb": 3.5, "mask_map50_95": 0.80, "timed": False,
             "backend": "replay"},
            {"target": "ncnn", "precision": "int8", "timed": True, "error": "pnnx: crashed"}]
    benchmark._drops(rows)
    assert rows[0]["drop"] == 0.0 and rows[1]["drop"] == -0.02 and "drop" not in rows[2]
    text = benchmark.table(rows).splitlines()
    assert text[0].split()[:4] == ["target", "prec", "MB", "mAP50-95"]
    rk = next(line for line in text if line.startswith("rknn"))
    assert rk.split().count("sim") == 7 and rk.rstrip().endswith("replay")  # every timing cell, and what ran
    assert (text[text.index(next(line for line in text if line.startswith("ncnn"))) + 1].strip()
            == "error: pnnx: crashed")
    js = benchmark.json_rows(rows)["rows"]
    fixed = ["target", "precision", "size_mb", "mask_map50_95", "drop", "inference_ms", "decode_ms", "end_to_end_ms",
             "pipeline_fps", "peak_rss_mb", "error"]
    assert all(list(r)[:len(fixed)] == fixed for r in js) and js[2]["error"] == "pnnx: crashed"
    png = tmp_path / "p.png"
    assert benchmark.plot(rows, png) and cv2.imread(str(png)).shape == (600, 960, 3)
    assert not benchmark.plot(rows[1:], tmp_path / "none.png")  # nothing timed: no plot
