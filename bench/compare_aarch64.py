"""`edgeseg eval` of bundles on a Raspberry Pi 5's CPU (emulated) and on this machine, in one run.

    scripts/aarch64-env.sh .venv/bin/python          # once: the emulated board (cached)
    python bench/compare_aarch64.py BUNDLE[:KEY=VALUE,...] ...

ARM runtimes take kernels x86 never runs (int8 dot products, fp16 arithmetic), so the same
bundle can score differently on the board. qemu reproduces their arithmetic, not their speed
(about 50x slower than the board). ``:KEY=VALUE`` passes runtime options to both runs (for
example ``bundles/m_ncnn_fp16:fp16=true``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeseg.runtime.replay import cache_root

ROOT = Path(__file__).resolve().parent.parent
BOARD = cache_root() / "aarch64" / "python"  # written by scripts/aarch64-env.sh
KEYS = ("mask_map50_95_full_res", "mask_map50_95", "box_map50_95")


def evaluate(python: str, bundle: str, options: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "eval.json"
        cmd = [python, "-m", "edgeseg", "eval", bundle, "--json", str(out)]
        for o in options:
            cmd += ["-r", o]
        subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    a = ap.parse_args()
    if not BOARD.is_file():
        sys.exit(f"error: {BOARD} missing; run scripts/aarch64-env.sh first")
    print("| bundle | options | " + " | ".join(f"{k} x86-64 / aarch64" for k in KEYS) + " |")
    print("| --- | --- |" + " --- |" * len(KEYS))
    for spec in a.bundles:
        bundle, _, opts = spec.partition(":")
        options = [o for o in opts.split(",") if o]
        here, board = evaluate(sys.executable, bundle, options), evaluate(str(BOARD), bundle, options)
        print(f"| {Path(bundle).name} | {' '.join(options) or '-'} | "
              + " | ".join(f"{here[k]:.4f} / {board[k]:.4f}" for k in KEYS) + " |", flush=True)


if __name__ == "__main__":
    main()
