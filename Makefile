# Quick start: `make demo` (prune a bundled zoo model) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench coverage clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m models build resnet18 -o .cache/demo/resnet18.onnx
	$(VENV)/bin/graphprune analyze .cache/demo/resnet18.onnx --summary
	$(VENV)/bin/graphprune .cache/demo/resnet18.onnx --ratio 0.5 -o .cache/demo/resnet18.pruned.onnx --report .cache/demo/report.json

test: $(STAMP)
	$(PY) -m pytest

coverage: $(STAMP)
	$(PY) benchmarks/coverage.py

clean:
	rm -rf $(VENV) .cache
