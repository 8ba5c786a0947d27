# `make test` and `make demo` each build .venv from nothing on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests tools

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/inceptionv3 info inception-v3_3rdparty_8xb32_in1k
	$(BIN)/inceptionv3 download inception-v3_3rdparty_8xb32_in1k

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
