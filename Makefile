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

$(VENV)/.installed-test: pyproject.toml benchmarks/pyproject.toml $(wildcard plugins/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]' -e benchmarks $(foreach p,$(wildcard plugins/*/pyproject.toml),-e $(dir $(p)))
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/relay demo

# The JavaScript client (clients/js) is installed and tested when npm is present;
# in CI ($$CI set; .ci/run installs node and npm) it must be.
NPM := $(shell command -v npm 2>/dev/null)

test: $(VENV)/.installed-test
ifneq ($(NPM),)
	cd clients/js && npm ci --no-audit --no-fund
else ifneq ($(filter-out 0 false,$(CI)),)
	$(error CI runs the JavaScript client's tests: install node and npm (apt-get install nodejs npm))
endif
	$(BIN)/python -m pytest $(PYTEST_ARGS)
ifneq ($(NPM),)
	cd clients/js && RELAY_PYTHON=$(abspath $(BIN)/python) npm test
endif

bench: $(VENV)/.installed-test
	$(BIN)/relay bench

lint: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -e '.[lint]'
	$(BIN)/ruff check relay tests plugins benchmarks
	$(BIN)/mypy relay benchmarks/relay_bench

clean:
	rm -rf $(VENV)
