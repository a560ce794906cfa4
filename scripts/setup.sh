#!/usr/bin/env bash
# Installs difftree_rt and what it needs on a fresh machine, then builds the package (editable).
# Safe to re-run. A machine that already has torch keeps it (a GPU machine brings its own CUDA
# torch); otherwise the CPU build torch==2.13.0 is installed, never a bare `torch`, which pip would
# resolve to a multi-GB CUDA build. Override with TORCH_SPEC=... if you need another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0} (CPU build)"
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
if ! "$PY" -c "import transformers, safetensors, pytest, hypothesis, scikit_build_core, pybind11, tqdm" 2>/dev/null; then
  echo "[setup] installing requirements-dev.txt"
  "$PY" -m pip install -q -r requirements-dev.txt
fi

# CUDA kernels are compiled whenever nvcc is available (compile-only on a machine without a GPU).
if command -v nvcc >/dev/null 2>&1; then export DIFFTREE_CUDA=ON; else export DIFFTREE_CUDA=OFF; fi
echo "[setup] building difftree_rt (DIFFTREE_CUDA=$DIFFTREE_CUDA)"
"$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -m difftree_rt info
