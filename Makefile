# Two commands for a fresh machine: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medlens demo

# the house rules first (seconds): lint and format, the layers of DESIGN.md, types of the inference core
lint: $(STAMP)
	$(BIN)/ruff check medlens tests benchmarks
	$(BIN)/ruff format --check medlens tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

# two workers (pytest-xdist): the suite's CLI processes and servers spend much of their time in
# single-threaded start-up and waits, so two of them share a 2-core machine well
test: lint
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) build *.egg-info
