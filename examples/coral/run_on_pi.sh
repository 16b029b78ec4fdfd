#!/usr/bin/env bash
set -euo pipefail
BUNDLE=${1:?usage: run_on_pi.sh BUNDLE [camera: 0|pi]}
SRC=${EDGESEG_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}   # this clone, copied to the board (edgeseg is not on a package index)
ldconfig -p | grep -q libedgetpu.so.1 || echo "note: libedgetpu.so.1 not found; the int8 model will run on the CPU" >&2
python3 -m venv ~/edgeseg-venv --system-site-packages
# picamera2 from the OS is built against the system numpy (1.24 on Bookworm); a numpy 2 in the
# venv would break `import picamera2`, so the venv keeps the system's version
NUMPY=$(python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
~/edgeseg-venv/bin/pip install "$SRC[tflite]" ${NUMPY:+"numpy==$NUMPY"}
~/edgeseg-venv/bin/edgeseg bench "$BUNDLE"
exec ~/edgeseg-venv/bin/edgeseg run "$BUNDLE" --camera "${2:-0}" --json detections.jsonl --save annotated.mp4
