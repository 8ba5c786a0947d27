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
	$(BIN)/ruff check src tests tools benchmarks

test: lint
	$(BIN)/python -m pytest

# Classifies the shipped photo (a chickadee). Downloads the weights on first use; offline, it stops with the
# download error, which says how to pass a local file: make demo WEIGHTS=path/to/checkpoint
MODEL ?= inception-v3_3rdparty_8xb32_in1k
demo: $(STAMP)
	@$(BIN)/inceptionv3 predict demo/bird.jpg --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS)) --topk 5 \
	  || { echo "make demo: no weights. With a local checkpoint: make demo WEIGHTS=path/to/file"; exit 2; }

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
