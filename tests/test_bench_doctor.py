import json

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


def test_doctor_lists_targets_with_install_commands():
    r = cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    ort = next(t for t in d["targets"] if t["target"] == "onnxruntime")
    assert ort["toolchain_ok"] and ort["runtime_ok"]
    assert all(t["toolchain_install"] or t["toolchain_ok"] for t in d["targets"])
