# `make test` and `make demo` each build .venv from nothing on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# On a machine without an NVIDIA GPU: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the
# CPU-only torch first, and pip keeps it (a .venv of about 1.4 GB instead of 6).
TORCH_INDEX ?=
CPU_TORCH = $(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --disable-pip-version-check torch torchvision \
	--index-url $(TORCH_INDEX))

.PHONY: install test test-ray test-tf test-peers lint demo clean

# --no-compile: pip would byte-compile every file of the test stack (torch alone is thousands), most of which is
# never imported; Python compiles what is imported, when it is (a fifth of torch's install time here).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(CPU_TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks

# The tf-marked tests run here too once the tf and litert extras are installed (make test-tf installs them).
TF_MODULES := tensorflow tf_slim tf_keras litert_torch ai_edge_litert ai_edge_quantizer
test: lint
	@if $(BIN)/python -c "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, sys.argv[1:])))" \
	    $(TF_MODULES); then marks="not ray and not peers"; \
	else marks="not ray and not peers and not tf"; echo "make test: without the tf extras; make test-tf installs them and runs the rest"; fi; \
	$(BIN)/python -m pytest -m "$$marks"

# Ray Serve (about a minute: a local cluster with two replicas); its extra is heavy, so it has its own target.
test-ray: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	$(BIN)/python -m pytest -m ray

# The serving peers (LitServe, BentoML, KServe) live in an environment of their own, benchmarks/.peers-venv (about
# 1.7 GB, never the project's extras), which benchmarks/bench_peers.py builds: KServe's own gRPC client runs there.
test-peers: $(STAMP)
	test -f benchmarks/.peers-venv/versions.json || $(BIN)/python benchmarks/bench_peers.py --setup
	$(BIN)/python -m pytest -m peers

# TensorFlow's stack itself: TF-slim checkpoints written by TF-slim, Keras files written on the TensorFlow backend
# and by tf-keras, the TF preprocessing, and the LiteRT export. Its extras are about 1.5 GB, so it has its own target.
test-tf: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,tf,litert]'
	$(BIN)/python -m pytest -m tf

# The demo needs only the runtime and the default fast backend, not the test stack.
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(CPU_TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[openvino]'
	touch $(DEMO_STAMP)

# Classifies the shipped photo (a chickadee). Downloads the weights on first use; when that fails, the error
# above the hint says why (offline, a bad file, ...): make demo WEIGHTS=path/to/checkpoint uses a local file.
MODEL ?= inception-v3_3rdparty_8xb32_in1k
demo: $(DEMO_STAMP)
	@$(BIN)/inceptionv3 predict demo/bird.jpg --model $(MODEL) $(if $(WEIGHTS),--weights $(WEIGHTS)) --topk 5 \
	  || { status=$$?; echo "make demo: failed (the line above says why). A local checkpoint: make demo WEIGHTS=path/to/file"; exit $$status; }

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
