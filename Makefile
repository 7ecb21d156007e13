# Keel: `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
KEEL   := $(VENV)/bin/keel
STAMP  := $(VENV)/.keel-installed
EXAMPLE := examples/support_bot

.PHONY: install run test test-fast lint bench clean

install: $(STAMP)

# torch first, as the local CPU build: a plain `torch` requirement would pull CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded defaults: ingest the sample knowledge base and query it.
run: install
	$(KEEL) --config $(EXAMPLE)/keel.toml ingest
	$(KEEL) --config $(EXAMPLE)/keel.toml search "How long do I have to ask for a refund?"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not chroma_server"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/retrieval_beir.py ../shared/data/scifact
	$(PY) benchmarks/ingest.py ../shared/data/scifact

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
