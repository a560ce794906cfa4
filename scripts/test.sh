#!/usr/bin/env bash
# The test command: set-up, C++ tests (ctest, incl. an outside project using find_package), the
# core under sanitizers + fuzzing, the Python op tests against a sanitizer build, a CUDA-off wheel
# installed non-editable and tested from outside the source tree, then the Python test suite.
#
#   bash scripts/test.sh [--quick] [pytest arguments...]
#
# --quick: set-up, C++ build + ctest and pytest only (no sanitizers, fuzzing or CUDA-off wheel).
# Every stage prints "[test] <stage> ..." when it starts and its time when it ends; a summary
# table closes the run. Extra arguments go to the final pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
PYTEST_ARGS=("$@")
GEN=(); command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
if command -v nvcc >/dev/null 2>&1; then CUDA=ON; else CUDA=OFF; fi
SAN_ENV=(UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1)

STAGE_NAMES=(); STAGE_TIMES=(); STAGE_RESULTS=(); T_START=$SECONDS

summary() {
  [ ${#STAGE_NAMES[@]} -gt 0 ] || return 0
  echo "[test] summary ($(( SECONDS - T_START )) s in all):"
  for i in "${!STAGE_NAMES[@]}"; do
    printf '[test]   %-52s %6s s  %s\n' "${STAGE_NAMES[$i]}" "${STAGE_TIMES[$i]}" "${STAGE_RESULTS[$i]}"
  done
}
trap summary EXIT

# stage <name> <command...>: runs one stage with errexit on inside it, timed; stops at a failure.
stage() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "[test] $name ..."
  set +e
  (set -e; "$@")
  rc=$?
  set -e
  STAGE_NAMES+=("$name"); STAGE_TIMES+=("$(( SECONDS - t0 ))")
  if [ "$rc" -eq 0 ]; then
    STAGE_RESULTS+=(ok); echo "[test] $name: $(( SECONDS - t0 )) s"
  else
    STAGE_RESULTS+=("FAILED (exit $rc)"); echo "[test] $name: FAILED (exit $rc) after $(( SECONDS - t0 )) s"
    exit "$rc"
  fi
}

cpp_build() {
  cmake -S . -B build/ctest "${GEN[@]}" -DDIFFTREE_CUDA=$CUDA -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build/ctest -j "$(nproc)"
}

install_clang() {
  echo "[test] clang++ not found: installing clang with apt-get (for the sanitizer and fuzz stages;"
  echo "[test] --quick skips them)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev) \
    >/dev/null 2>&1 || echo "[test] could not install clang: sanitizer and fuzz stages skipped"
}

sanitize_build() {
  CC=clang CXX=clang++ cmake -S . -B build/sanitize "${GEN[@]}" -DDIFFTREE_CUDA=OFF \
    -DDIFFTREE_SANITIZE=ON -DDIFFTREE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build/sanitize -j "$(nproc)"
}

fuzz() {
  mkdir -p build/fuzz-corpus
  local rc=0
  env "${SAN_ENV[@]}" build/sanitize/fuzz_core -max_total_time="${FUZZ_SECONDS:-60}" \
    -print_final_stats=1 build/fuzz-corpus >build/fuzz.log 2>&1 || rc=$?
  grep -E "DONE|stat::number_of_executed_units" build/fuzz.log || true
  if [ "$rc" -ne 0 ]; then
    tail -n 60 build/fuzz.log
    echo "[test] the fuzzer found a crash (exit $rc): reproduce with build/sanitize/fuzz_core <crash file>"
    return "$rc"
  fi
}

# The Python op tests against an ASan + UBSan build of the extension (gcc; the runtime must be
# preloaded into python, with libstdc++ so exceptions thrown by the core are intercepted).
asan_python_ops() {
  cmake -S . -B build/asan-py "${GEN[@]}" -DDIFFTREE_PYTHON=ON -DDIFFTREE_SANITIZE=ON \
    -DDIFFTREE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
  cmake --build build/asan-py -j "$(nproc)"
  local ext
  ext=$(ls build/asan-py/_C*.so)
  env LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
    ASAN_OPTIONS=detect_leaks=0 "${SAN_ENV[@]}" DIFFTREE_RT_EXT="$ext" \
    "$PY" -m pytest -q -p no:cacheprovider -p no:warnings tests/ops -k "not torch_compile"
}

stage "set-up (scripts/setup.sh)" bash scripts/setup.sh
stage "C++ build (DIFFTREE_CUDA=$CUDA)" cpp_build
stage "ctest" ctest --test-dir build/ctest --output-on-failure
if [ "$QUICK" = 0 ]; then
  if ! command -v clang++ >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    stage "install clang (apt-get)" install_clang
  fi
  if command -v clang++ >/dev/null 2>&1; then
    stage "C++ build under ASan + UBSan (clang)" sanitize_build
    stage "ctest under ASan + UBSan" env "${SAN_ENV[@]}" ctest --test-dir build/sanitize --output-on-failure
    stage "fuzzing (${FUZZ_SECONDS:-60} s)" fuzz
  else
    echo "[test] clang not available: sanitizer and fuzz stages skipped"
  fi
  if command -v gcc >/dev/null 2>&1; then
    stage "Python op tests, ASan + UBSan extension" asan_python_ops
  fi
  stage "CUDA-off wheel, installed (scripts/test_nocuda.sh)" bash scripts/test_nocuda.sh
fi
stage "pytest" "$PY" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}"
