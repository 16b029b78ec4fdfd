#!/usr/bin/env bash
set -euo pipefail
BUNDLE=${1:?usage: run_on_pi.sh BUNDLE}
SRC=${EDGESEG_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}   # this clone, copied to the board (edgeseg is not on a package index)
sudo apt install -y imx500-all python3-picamera2          # sensor firmware, imx500-package, picamera2
python3 -m venv ~/edgeseg-venv --system-site-packages      # picamera2 comes from the system
~/edgeseg-venv/bin/pip install "$SRC"                       # no runtime extra: the sensor is the runtime
exec ~/edgeseg-venv/bin/edgeseg run "$BUNDLE" --camera 0 --json detections.jsonl --save annotated.mp4
