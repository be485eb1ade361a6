# oodgate: `make serve` and `make test` set up .venv on first use and reuse it after.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# glibc malloc returns big activation buffers to the OS after every batch and
# then page-faults them back in; keeping them mapped saves a large share of CPU.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 268435456

.PHONY: help setup serve test lint system-deps train-default export-default colour-data

help:
	@echo "make serve          set up .venv and serve every bundle in models/ (OODGATE_* settings apply)"
	@echo "make test           set up .venv and run the test suite"
	@echo "make lint           ruff"
	@echo "make train-default  retrain models/fashion-glow/1: configs/fashion-glow.yaml, then fashion-glow-upright.yaml (CPU: ~1.3 h)"
	@echo "make export-default export runs/fashion-glow-upright/best.pt to models/fashion-glow/1"
	@echo "make colour-data    the Debian packages (as root) and data/ that clipart-glow's build, report and background read"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,eval,test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests drive for real (promtool, prometheus). Installed
# only where missing and only when we may (root, apt-get present).
system-deps:
	@if ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian package prometheus (promtool) for the tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null); \
	  else echo "note: promtool not found and cannot install it; tests that need it will skip"; fi; \
	fi

serve: $(STAMP)
	$(VENV)/bin/oodgate-serve

test: $(STAMP) system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

train-default: $(STAMP)
	@test -d /usr/share/datasets/fashion-mnist || (echo "FashionMNIST missing: sudo apt-get install -y dataset-fashion-mnist" && exit 2)
	$(VENV)/bin/oodgate-train configs/fashion-glow.yaml --resume
	$(VENV)/bin/oodgate-train configs/fashion-glow-upright.yaml --resume

export-default: $(STAMP)
	$(VENV)/bin/oodgate-export runs/fashion-glow-upright/best.pt --force

# clipart-glow's data: the clip-art split, the colour OOD sets and the general mixes
# (models/clipart-glow/README.md, docs/colour-ood-sets.md). The package list comes
# from the sources themselves (python -m training.image_debs).
colour-data: $(STAMP)
	@debs="$$($(PY) -m training.image_debs)"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$debs >/dev/null 2>&1 || \
	  (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$debs >/dev/null); \
	else echo "as root: apt-get install -y $$debs"; fi
	test -f data/clipart32/test.npz || $(PY) -m training.prepare_clipart data/clipart32
	$(PY) -m training.colour_sets data/colour-ood
	$(PY) -m training.general_images data/general/general32-v2.npz
	$(PY) -m training.general_images data/general/general28-gray-v2.npz --size 28 --channels 1
