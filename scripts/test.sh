#!/usr/bin/env bash
# The test command: set-up, C++ tests (ctest, incl. an outside project using find_package),
# then the Python test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh

if command -v nvcc >/dev/null 2>&1; then CUDA=ON; else CUDA=OFF; fi
echo "[test] C++ core + tests (DIFFTREE_CUDA=$CUDA)"
GEN=(); command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
cmake -S . -B build/ctest "${GEN[@]}" -DDIFFTREE_CUDA=$CUDA -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/ctest -j "$(nproc)"
ctest --test-dir build/ctest --output-on-failure

echo "[test] Python tests"
"$PY" -m pytest -q -p no:cacheprovider "$@"
