#!/usr/bin/env bash
# Count objects crossing a line and publish them to Home Assistant's MQTT broker.
#   ./run_on_pi.sh BUNDLE BROKER_HOST [TOPIC]
# Credentials: EDGESEG_MQTT_USERNAME / EDGESEG_MQTT_PASSWORD in the environment (never on the command line).
set -euo pipefail
BUNDLE=${1:?usage: run_on_pi.sh BUNDLE BROKER_HOST [TOPIC]}
BROKER=${2:?usage: run_on_pi.sh BUNDLE BROKER_HOST [TOPIC]}
TOPIC=${3:-edgeseg/driveway}
SRC=${EDGESEG_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}   # this clone, copied to the board (edgeseg is not on a package index)
python3 -m venv ~/edgeseg-venv --system-site-packages
# picamera2 from the OS is built against the system numpy (1.24 on Bookworm); keep that version
NUMPY=$(python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
~/edgeseg-venv/bin/pip install "$SRC[onnxruntime,track,mqtt]" ${NUMPY:+"numpy==$NUMPY"}
exec ~/edgeseg-venv/bin/edgeseg run "$BUNDLE" --camera 0 --track --line 0,0.6,1,0.6 \
  --mqtt "mqtt://$BROKER/$TOPIC" --mqtt-events-only --mqtt-ha
