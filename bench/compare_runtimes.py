"""`edgeseg bench` over several bundles in one run, as a Markdown table.

    python bench/compare_runtimes.py [BUNDLE ...]      # default: converts the reference model first

With no bundles it converts the bundled reference model to ONNX Runtime FP32 and INT8 (into
bundles/) and times both on the bundled scenes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeseg.defaults import DEFAULT_SCENES
from edgeseg.runtime.bench import bench
from edgeseg.runtime.model import Model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="*", type=Path)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    bundles = a.bundles
    if not bundles:
        from edgeseg.convert import convert

        bundles = [convert(precision=p, out=Path("bundles") / f"bench_onnxruntime_{p}", log=lambda m: None).path
                   for p in ("fp32", "int8")]
    opts = {"threads": a.threads} if a.threads else {}
    rows = [bench(Model.load(b, **opts), DEFAULT_SCENES, frames=a.frames) for b in bundles]
    print("| bundle | precision | inference ms (p90) | decode ms | end-to-end ms (p90) | pipeline FPS "
          "| x of 1000/inference | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {Path(r['bundle']).name} | {r['precision']} | "
              f"{r['inference_ms']['median']} ({r['inference_ms']['p90']}) | "
              f"{r['decode_ms']['median']} | {r['end_to_end_ms']['median']} ({r['end_to_end_ms']['p90']}) | "
              f"{r['pipeline_fps']} | {r['pipeline_vs_inference_bound']} | {r['peak_rss_mb']} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
