# Two commands set up and run everything on a fresh machine:
#   make demo   create .venv, install tfcompress, run the default pipeline
#   make test   create .venv, install tfcompress with test extras, run the whole suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-zoo lint docs clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tfcompress demo --out demo_out

# Two processes (the CI machine has 2 cores); tests/conftest.py groups and orders the work.
XDIST := -n 2 --dist loadgroup --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST)

# The fast lane (under 2 minutes): no test marked slow, no notebooks.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" $(XDIST)

# Every BENCHMARKS.md section but the Model zoo, full mode (31 minutes on 2 idle cores).
bench: $(STAMP)
	$(BIN)/python -m benchmarks

# The Model zoo section at real size, full mode (6-25 minutes a family, 13 families).
bench-zoo: $(STAMP)
	$(BIN)/python -m benchmarks.zoo

lint: $(STAMP)
	$(BIN)/ruff check tfcompress export tests benchmarks
	$(BIN)/ruff format --check tfcompress export tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy tfcompress

# The docs site, built offline into site/ (mkdocs-material + mkdocstrings).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) demo_out build site *.egg-info
