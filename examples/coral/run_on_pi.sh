#!/usr/bin/env bash
set -euo pipefail
BUNDLE=${1:?usage: run_on_pi.sh BUNDLE [camera: 0|pi]}
SRC=${EDGESEG_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}   # this clone, copied to the board (edgeseg is not on a package index)
ldconfig -p | grep -q libedgetpu.so.1 || echo "note: libedgetpu.so.1 not found; the int8 model will run on the CPU" >&2
python3 -m venv ~/edgeseg-venv --system-site-packages
~/edgeseg-venv/bin/pip install "$SRC[tflite]"
~/edgeseg-venv/bin/edgeseg bench "$BUNDLE"
exec ~/edgeseg-venv/bin/edgeseg run "$BUNDLE" --camera "${2:-0}" --json detections.jsonl --save annotated.mp4
