# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the package with every extra; re-runs are fast.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned in the same pip command as the package: on these machines torch==2.13.0 is a
# local CPU build, and any other resolution would download a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test bench fidelity clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/evim-deploy demo

# The import-linter contracts in pyproject.toml (the layers) first, then the whole suite. Every extra is
# installed here, so a missing one fails the run rather than skipping a backend (evim_deploy.testing.extras).
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-logo --no-cache
	EVIM_DEPLOY_ALL_EXTRAS=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/cpu_latency.py

# The trained fixture through every target x precision: accuracy/agreement table, exit 1 on any miss.
fidelity: $(STAMP)
	$(PY) bench/fidelity.py

clean:
	rm -rf $(VENV) out .pytest_cache
