#!/usr/bin/env bash
# An emulated Raspberry Pi 5 for the device-side tests that run on ARM (tests/conftest.py:
# `aarch64`): Debian Bookworm's arm64 Python 3.11 (what Raspberry Pi OS Bookworm ships) run by
# qemu-user as a Cortex-A76, with the aarch64 wheels pip installs on a board for edgeseg's device
# extras and rknn-toolkit-lite2. `make test` runs this; it is cached under
# ${EDGESEG_CACHE:-~/.cache/edgeseg}/aarch64 and only the wheels are redone when pyproject.toml
# or this script changes. Usage: scripts/aarch64-env.sh [HOST_PYTHON_WITH_PIP]; then, from the clone:
#   PYTHONPATH=. ~/.cache/edgeseg/aarch64/python -m edgeseg run BUNDLE --source FOLDER
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-python3}"
ROOT="${EDGESEG_CACHE:-$HOME/.cache/edgeseg}/aarch64"
SYSROOT="$ROOT/bookworm"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v qemu-aarch64 >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "installing qemu-user and debootstrap for the aarch64 tests"
  as_root apt-get update -q && as_root apt-get install -y -q qemu-user debootstrap
fi

if [ ! -f "$SYSROOT/.ready" ]; then
  echo "building a Debian Bookworm arm64 root with Python in $SYSROOT (once)"
  as_root rm -rf "$SYSROOT"
  mkdir -p "$ROOT"
  # --foreign only downloads and unpacks (no arm64 code runs, so no binfmt registration is needed);
  # qemu's -L prefix makes the unpacked tree the program's / for libraries and files
  as_root debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,libgomp1 \
    bookworm "$SYSROOT" http://deb.debian.org/debian >"$ROOT/debootstrap.log"
  for deb in "$SYSROOT"/var/cache/apt/archives/*.deb; do as_root dpkg -x "$deb" "$SYSROOT"; done
  as_root rm -rf "$SYSROOT"/var/cache/apt/archives/*.deb
  as_root touch "$SYSROOT/.ready"
fi
# qemu-user shows the program the host's x86 /proc/cpuinfo, which cpuinfo-based runtimes (ONNX
# Runtime) cannot parse and crash on, and no CPU id in sysfs (oneDNN complains): a Pi 5's files
# (BCM2712: two of its four Cortex-A76 cores, as this machine has two) stand in under the prefix
CPUINFO="$(for i in 0 1; do printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$i"; done
printf 'Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0')"
as_root mkdir -p "$SYSROOT/proc"
printf '%s\n' "$CPUINFO" | as_root tee "$SYSROOT/proc/cpuinfo" >/dev/null
for i in 0 1; do
  as_root mkdir -p "$SYSROOT/sys/devices/system/cpu/cpu$i/regs/identification"
  echo 0x00000000414fd0b1 | as_root tee "$SYSROOT/sys/devices/system/cpu/cpu$i/regs/identification/midr_el1" >/dev/null
done

KEY="$(cat "$SRC/pyproject.toml" "$0" | sha256sum | cut -c1-12)"  # the extras and this list
SITE="$ROOT/site-$KEY"
if [ ! -f "$SITE/.ready" ]; then
  echo "installing the aarch64 wheels of the device install into $SITE"
  rm -rf "$SITE" "$ROOT/wheel"
  platforms=(--platform manylinux2014_aarch64)
  for v in $(seq 17 36); do platforms+=(--platform "manylinux_2_${v}_aarch64"); done  # Bookworm: glibc 2.36
  "$PY" -m pip wheel -q --no-deps -w "$ROOT/wheel" "$SRC"
  "$PY" -m pip install -q --target "$SITE" "${platforms[@]}" --python-version 3.11 --implementation cp \
    --abi cp311 --only-binary=:all: "$(ls "$ROOT"/wheel/edgeseg-*.whl)[onnxruntime,openvino,ncnn,mnn,tflite]" \
    rknn-toolkit-lite2 pyyaml
  # the tests run the working tree's edgeseg; only its dependencies come from here
  rm -rf "$SITE"/edgeseg "$SITE"/edgeseg-*.dist-info "$ROOT/wheel"
  touch "$SITE/.ready"
fi
ln -sfn "$SITE" "$ROOT/site"
# $ROOT/python: Python on the emulated board (put the edgeseg to run first on PYTHONPATH)
cat >"$ROOT/python.tmp" <<WRAPPER
#!/bin/sh
export PYTHONPATH="\${PYTHONPATH:+\$PYTHONPATH:}$ROOT/site" PYTHONPYCACHEPREFIX="$ROOT/pycache"
exec qemu-aarch64 -cpu cortex-a76 -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "\$@"
WRAPPER
chmod +x "$ROOT/python.tmp" && mv "$ROOT/python.tmp" "$ROOT/python"
echo "$ROOT/python"
