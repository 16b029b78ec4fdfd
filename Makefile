# Two commands from a fresh clone:
#   make demo   set up, convert the bundled model to ONNX Runtime INT8, stream the sample scenes
#               through `edgeseg run` (annotated video + JSON), print FPS and accuracy
#   make test   set up, lint (ruff check .) and run the whole test suite (what CI runs)
#   make test-fast   what a developer runs while working: all but the vendor-toolchain, emulated and slow tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.host: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e ".[host]"
	touch $@

# The tests also train a small semantic model and import TorchScript (torch) and an Ultralytics
# .pt checkpoint (ultralytics, AGPL, test-only). edgeseg itself never needs either on a device.
# torch 2.14.1 + torchvision 0.29.1 is the pair that installs from this machine kind's local wheels.
# Sony's IMX500 converter is a Java program (Java >= 17): an older java on PATH counts as none
# (the IMX500 tests would skip, which fails CI). The MQTT tests start a real broker (Mosquitto).
JAVA_MAJOR = java -version 2>&1 | sed -n 's/.* version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -1
$(VENV)/.test: pyproject.toml | $(BIN)/activate
	@v=$$($(JAVA_MAJOR)); if [ "$${v:-0}" -lt 17 ]; then echo "installing Java 17 for imxconv-pt (java on PATH: $${v:-none})"; \
	  (apt-get update -q && apt-get install -y -q openjdk-17-jre-headless) || \
	  (sudo apt-get update -q && sudo apt-get install -y -q openjdk-17-jre-headless); fi
	@v=$$($(JAVA_MAJOR)); [ "$${v:-0}" -ge 17 ] || { echo "imxconv-pt needs Java >= 17; java on PATH: $${v:-none}"; exit 1; }
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { echo "installing Mosquitto for the MQTT tests"; \
	  (apt-get update -q && apt-get install -y -q mosquitto) || \
	  (sudo apt-get update -q && sudo apt-get install -y -q mosquitto); }
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[test]" "ultralytics==8.4.190"
	touch $@

demo: $(VENV)/.host
	$(BIN)/edgeseg convert --target onnxruntime --force
	$(BIN)/edgeseg run --source edgeseg/assets/shapes/val/images --save demo/annotated.mp4 --json demo/results.jsonl
	$(BIN)/edgeseg eval --json demo/eval.json

# The device side again with the oldest numpy edgeseg allows (1.24, Raspberry Pi OS Bookworm's,
# which picamera2 needs) and the OpenCV 4.x pip picks next to it.
OLDEST ?= .venv-oldest
$(OLDEST)/.test: pyproject.toml
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q --upgrade pip
	$(OLDEST)/bin/pip install -q -e ".[host]" "numpy==1.24.4" pytest hypothesis pillow
	touch $@

# An emulated Raspberry Pi 5 (arm64 Debian Bookworm under qemu-user) for the tests that run
# bundles on ARM kernels; cached in ~/.cache/edgeseg/aarch64, so this is quick after the first time.
test: $(VENV)/.test $(OLDEST)/.test
	$(BIN)/ruff check .
	./scripts/aarch64-env.sh $(BIN)/python
	$(BIN)/python -m pytest -q --durations=12
	$(OLDEST)/bin/python -c "import numpy, cv2; print('device side with numpy', numpy.__version__, 'and OpenCV', cv2.__version__)"
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider tests/test_run.py tests/test_decode_reference.py \
	  tests/test_nms.py tests/test_preprocess.py tests/test_device_install.py tests/reliability/test_fuzz.py \
	  --deselect tests/test_decode_reference.py::test_golden_was_made_by_the_reference_version  # needs ultralytics

# Everything but the tests marked toolchain (vendor converters and their envs), emulated (qemu)
# and slow (full conversions, long runs, repeated heavy subprocesses): a few minutes on 2 cores.
# Two workers (pytest-xdist): the tests mostly wait on one core each. `make test` still runs them all.
test-fast: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not toolchain and not emulated" --durations=5

bench: $(VENV)/.host
	$(BIN)/python bench/compare_runtimes.py

clean:
	rm -rf $(VENV) $(OLDEST) bundles demo
