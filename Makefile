# Two commands from a fresh clone:
#   make demo   set up, convert the bundled model to ONNX Runtime INT8, stream the sample scenes
#               through `edgeseg run` (annotated video + JSON), print FPS and accuracy
#   make test   set up and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.host: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q -e ".[host]"
	touch $@

# The tests also train a small semantic model and import TorchScript (torch) and an Ultralytics
# .pt checkpoint (ultralytics, AGPL, test-only). edgeseg itself never needs either on a device.
# torch 2.14.1 + torchvision 0.29.1 is the pair that installs from this machine kind's local wheels.
# Sony's IMX500 converter is a Java program (Java >= 17).
$(VENV)/.test: pyproject.toml | $(BIN)/activate
	@command -v java >/dev/null 2>&1 || { echo "installing Java 17 for imxconv-pt"; \
	  (apt-get update -q && apt-get install -y -q openjdk-17-jre-headless) || \
	  (sudo apt-get update -q && sudo apt-get install -y -q openjdk-17-jre-headless); }
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[test]" "ultralytics==8.4.190"
	touch $@

demo: $(VENV)/.host
	$(BIN)/edgeseg convert --target onnxruntime
	$(BIN)/edgeseg run --source edgeseg/assets/shapes/val/images --save demo/annotated.mp4 --json demo/results.jsonl
	$(BIN)/edgeseg eval --json demo/eval.json

test: $(VENV)/.test
	$(BIN)/python -m pytest -q --durations=12

bench: $(VENV)/.host
	$(BIN)/python bench/compare_runtimes.py

clean:
	rm -rf $(VENV) bundles demo
