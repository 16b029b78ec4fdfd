#!/usr/bin/env bash
# On an RK3588 board: install the runtime side and stream the camera through the bundle.
set -euo pipefail
BUNDLE=${1:?usage: run_on_board.sh BUNDLE [camera-index]}
SRC=${EDGESEG_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}   # this clone, copied to the board (edgeseg is not on a package index)
test -e /usr/lib/librknnrt.so || { echo "error: /usr/lib/librknnrt.so missing; install Rockchip's NPU runtime for your board image" >&2; exit 2; }
python3 -m venv ~/edgeseg-venv
~/edgeseg-venv/bin/pip install "$SRC" rknn-toolkit-lite2    # no torch, no onnx on the board
~/edgeseg-venv/bin/edgeseg bench "$BUNDLE"
exec ~/edgeseg-venv/bin/edgeseg run "$BUNDLE" --camera "${2:-0}" --json detections.jsonl --save annotated.mp4
