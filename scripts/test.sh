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

# Sanitizers + fuzzing (clang): the core and its C++ tests under AddressSanitizer and
# UndefinedBehaviorSanitizer, then the libFuzzer target for FUZZ_SECONDS (default 60).
if ! command -v clang++ >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing clang (for the sanitizer and fuzz steps)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev) \
    >/dev/null 2>&1 || echo "[test] could not install clang"
fi
if command -v clang++ >/dev/null 2>&1; then
  echo "[test] C++ core under ASan + UBSan, then fuzzing for ${FUZZ_SECONDS:-60} s"
  CC=clang CXX=clang++ cmake -S . -B build/sanitize "${GEN[@]}" -DDIFFTREE_CUDA=OFF \
    -DDIFFTREE_SANITIZE=ON -DDIFFTREE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build/sanitize -j "$(nproc)"
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ctest --test-dir build/sanitize --output-on-failure
  mkdir -p build/fuzz-corpus
  rc=0
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 build/sanitize/fuzz_core \
    -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1 build/fuzz-corpus \
    >build/fuzz.log 2>&1 || rc=$?
  grep -E "DONE|stat::number_of_executed_units" build/fuzz.log || true
  if [ "$rc" -ne 0 ]; then
    tail -n 60 build/fuzz.log
    echo "[test] the fuzzer found a crash (exit $rc): reproduce with build/sanitize/fuzz_core <crash file>"
    exit "$rc"
  fi
else
  echo "[test] clang not available: sanitizer and fuzz steps skipped"
fi

# The Python op tests against an ASan + UBSan build of the extension (gcc; the runtime must be
# preloaded into python, with libstdc++ so exceptions thrown by the core are intercepted).
if command -v gcc >/dev/null 2>&1; then
  echo "[test] Python op tests against the sanitizer build of the extension"
  cmake -S . -B build/asan-py "${GEN[@]}" -DDIFFTREE_PYTHON=ON -DDIFFTREE_SANITIZE=ON \
    -DDIFFTREE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
  cmake --build build/asan-py -j "$(nproc)"
  ext=$(ls build/asan-py/_C*.so)
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
    ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    DIFFTREE_RT_EXT="$ext" "$PY" -m pytest -q -p no:cacheprovider -p no:warnings tests/ops \
    -k "not torch_compile"
fi

echo "[test] Python tests"
"$PY" -m pytest -q -p no:cacheprovider "$@"
