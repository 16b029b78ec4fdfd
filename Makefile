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

# torch (CPU build) trains the small semantic model and imports TorchScript in the tests;
# edgeseg itself never needs it on a device.
$(VENV)/.test: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.host
	$(BIN)/edgeseg convert --target onnxruntime
	$(BIN)/edgeseg run --source edgeseg/assets/shapes/val/images --save demo/annotated.mp4 --json demo/results.jsonl
	$(BIN)/edgeseg eval --json demo/eval.json

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.host
	$(BIN)/python bench/compare_runtimes.py

clean:
	rm -rf $(VENV) bundles demo
