# `make run` serves the zero-credential default on localhost; `make test` runs the tests.
# `make lint` runs ruff, mypy (strict) and import-linter (the layers in pyproject.toml).
# All create .venv and install the project on first use.

VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

run: $(BIN)/.installed
	$(BIN)/qa-gateway serve --host 127.0.0.1

test: $(BIN)/.installed
	bash .ci/services
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python -m bench

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
