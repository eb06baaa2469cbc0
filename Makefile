# visionpipe developer commands. `make demo` and `make test` set everything up on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup setup-exporters up down demo test test-fast bench lint clean

# The venv is rebuilt when any requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt training_job/requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

node_modules/.bin/azurite: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

local.settings.json: local.settings.json.template
	$(PY) -m visionpipe.local.stack init

setup: $(STAMP) node_modules/.bin/azurite local.settings.json  ## venv, Azurite, local settings
	@$(PY) scripts/fetch_weights.py

# Optional: the export converters (OpenVINO, float16). Their tests skip without them; CI installs them.
setup-exporters: $(STAMP)  ## the export converters of training_job/requirements-export.txt
	$(PY) -m pip install --quiet -r training_job/requirements-export.txt

up: setup  ## start the local stack in the background; returns once /health answers
	$(PY) -m visionpipe.local.stack up

down:  ## stop the local stack
	@test -x $(PY) && $(PY) -m visionpipe.local.stack down || true

demo: up  ## drop a generated sample set and show what the pipeline made of it
	$(PY) -m visionpipe.local.demo

# Two pytest workers, a test file each at a time: most tests wait on Azurite, HTTP or a training
# subprocess, so two of them share CI's 2 cores well (the suite took 12+ min serially).
TEST_WORKERS ?= 2
test: setup  ## the whole suite in TEST_WORKERS processes; each starts and stops its own Azurite
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## the suite without the tests marked slow (training, the whole stack)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

bench: setup  ## benchmarks; each prints a JSON line last
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup  ## ruff, and the layer contracts in pyproject.toml (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean: down
	rm -rf .local
