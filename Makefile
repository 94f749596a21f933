# clap-pipeline — see README.md. Every target creates .venv and installs on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# `make stack` prints another DAGSTER_HOME (its instance on PostgreSQL): an exported one wins.
DAGSTER_HOME ?= $(CURDIR)/.dagster
export DAGSTER_HOME

.PHONY: install demo test lint docs dev mlflow-ui serve bench clean-data stack stack-down

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

demo: install
	@scripts/demo.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The documentation site; --strict turns a dead link or anchor into a failure.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test: lint docs
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/pytest -q

dev: install
	@scripts/dev.sh

stack: install
	@scripts/stack.sh up

stack-down: install
	@scripts/stack.sh down

mlflow-ui: install
	$(PY) -m clap_pipeline.cli mlflow-ui --host 127.0.0.1 --port $${MLFLOW_PORT:-5000}

serve: install
	$(VENV)/bin/clap-pipeline serve --host 127.0.0.1 --port $${SERVE_PORT:-8000}

bench: install
	$(PY) benchmarks/bench_demo.py
	$(PY) benchmarks/bench_metadata.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_sensor.py
	$(PY) benchmarks/bench_serve.py
