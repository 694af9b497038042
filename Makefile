# One entry point for people and CI. `make demo` runs the main job, `make test` the tests.
# Each sets up .venv itself: torch (CPU build 2.13.0 unless TORCH_SPEC says otherwise, e.g.
# `make test TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"`), then pipeblocks
# with its dev extras, in editable mode.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pipeblocks-installed
PYTEST_ARGS ?=

.PHONY: demo test lint setup clean gallery bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check pipeblocks tests benchmarks examples
	$(PY) -m mypy

gallery: $(STAMP)
	$(PY) docs/make_gallery.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info
