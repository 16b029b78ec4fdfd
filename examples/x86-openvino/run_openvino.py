"""Run an OpenVINO bundle on a chosen device (CPU, GPU, NPU, AUTO) over a camera.

    python run_openvino.py BUNDLE [--device NPU] [--camera 0]
"""

from __future__ import annotations

import argparse

from edgeseg.runtime.model import Model
from edgeseg.runtime.pipeline import run_pipeline
from edgeseg.runtime.sinks import JsonlSink
from edgeseg.runtime.sources import open_source


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--camera", default="0")
    ap.add_argument("--frames", type=int, default=600)
    a = ap.parse_args()
    with Model.load(a.bundle, device=a.device) as model:
        st = run_pipeline(model, open_source(a.camera), [JsonlSink("detections.jsonl", f"camera {a.camera}")],
                          annotate=False, max_frames=a.frames)
    print(st.summary())


if __name__ == "__main__":
    main()
