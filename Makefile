# Two entry points: `make demo` serves the click demo on the bundled default model (export, validate,
# launch), `make test` runs the tests.
# Both create the virtual environment on first use. torch==2.13.0 is installed first: on the CPU
# machines it is a local CPU build, and it keeps pip from pulling a multi-GB CUDA torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: demo test test-heavy lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The click demo: exports the default model to ONNX once (cached in ~/.cache/hrsam/exports; plus
# TensorRT engines where TensorRT and a GPU are present), validates it against eager PyTorch, then
# serves it and prints the URL; Ctrl+C stops it. Options: make demo DEMO_ARGS="--size 512" (python -m demo --help).
DEMO_ARGS ?=
demo: $(VENV)/.installed
	$(PY) -m demo $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not gpu and not trt and not heavy"

# Exports at 1024 and other multi-minute CPU checks; CI (.ci/run) runs them after `make test`.
test-heavy: $(VENV)/.installed
	$(PY) -m pytest -q -m "heavy and not gpu and not trt"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
