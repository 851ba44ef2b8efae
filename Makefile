# The two commands of the README: `make demo` and `make test`.
# Both create .venv with the Python 3.11+ found as $(PYTHON) and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]' $(foreach p,$(wildcard plugins/*/pyproject.toml),-e $(dir $(p)))
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/relay demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/relay bench

lint: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q ruff mypy
	$(BIN)/ruff check relay tests plugins benchmarks
	$(BIN)/mypy relay

clean:
	rm -rf $(VENV)
