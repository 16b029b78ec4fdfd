"""The soak run of bench/soak.py in CI: 10,000 generated frames through every sink, flat memory."""

import importlib.util
import json

import pytest
from conftest import ROOT

# ten thousand frames
pytestmark = pytest.mark.slow


def test_ten_thousand_frames_with_flat_memory(int8_bundle, capsys):
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    rep = soak.soak(int8_bundle.path, 10_000)
    with capsys.disabled():
        print("\nsoak:", json.dumps({k: rep[k] for k in ("frames", "fps", "rss_growth_after_warmup_mb")}),
              "RSS MB:", [mb for _, mb in rep["rss_samples_mb"]][::4])
    assert rep["frames"] == 10_000 and rep["jsonl_lines"] == 10_000
    # RSS after warm-up may wander by allocator noise, never climb with the frame count
    assert rep["rss_growth_after_warmup_mb"] < 10, rep["rss_samples_mb"]
