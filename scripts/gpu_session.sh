#!/usr/bin/env bash
# The GPU checklist (docs/GPU_CHECKLIST.md) as three device calls of < 10 minutes each, for a
# session lent an H100/H200 (30 minutes of device time in all). Every command has its own time
# limit and the script goes on after a failure, so one broken step cannot eat the budget;
# logs and result JSONs land in $OUT (default build/gpu_session).
#
#   run: bash scripts/gpu_session.sh 1    # build + correctness: kernels, policies, graph mode
#   run: bash scripts/gpu_session.sh 2    # lossless engine suite on CUDA + kernel benchmarks
#   run: bash scripts/gpu_session.sh 3    # round benchmarks (carry build/ref/ddtree for the
#                                         # side-by-side with the published loop)
#   run: bash scripts/gpu_session.sh new       # what was built since the last GPU run (< 7 min):
#                                              # graph mode for batches / caddtree (tree-size
#                                              # buckets) / taps / d2sd / presto / ar, presto's
#                                              # kernels + memcheck
#   run: bash scripts/gpu_session.sh newbench  # its benchmarks (< 8 min): batched rounds, the 8B
#                                              # table with graph-mode AR and every policy,
#                                              # top-K + select (tied-boundary select),
#                                              # presto_select vs its CPU path
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu_session}
mkdir -p "$OUT"
stage=${1:?usage: gpu_session.sh 1|2|3|new|newbench}
PYTEST=(python -m pytest -q -p no:warnings -p no:cacheprovider)

# The device tool returns at most 8 files from $OUT: every step's whole output goes into one
# log per stage (a summary line per step on stdout), result JSONs into one tarball at the end.
LOG="$OUT/stage$stage.log"
step() {  # step SECONDS NAME CMD...
  local limit=$1 name=$2
  shift 2
  local t0=$SECONDS
  echo "=== [$name] $*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== [$name] rc=$rc $((SECONDS - t0)) s" | tee -a "$LOG"
}

# The lent GPU image's default CXX (/opt/gcc/bin/g++, a wrapper) links libstdc++ statically;
# mixed with the libstdc++ torch loads, every C++ exception (a bad argument's ValueError) then
# segfaults. The distribution compiler links it dynamically (tests/test_build.py checks).
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
if ! python -c "import difftree_rt._C" 2>/dev/null; then
  # Hopper only and all cores unless the caller says otherwise: the build is on the clock.
  export CMAKE_ARGS=${CMAKE_ARGS:--DCMAKE_CUDA_ARCHITECTURES=90a}
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  step 300 build python -m pip install --no-build-isolation --no-deps -e .
fi
if ! python -c "import difftree_rt._C" 2>/dev/null; then
  # No usable scikit-build-core: build the extension with CMake and load it from the tree
  # (difftree_rt._ext honours DIFFTREE_RT_EXT).
  if ! ls build/gpu-py/_C*.so >/dev/null 2>&1; then
    step 60 cmake_configure cmake -S . -B build/gpu-py -G Ninja -DDIFFTREE_PYTHON=ON \
      -DDIFFTREE_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
      -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)"
    step 400 cmake_build cmake --build build/gpu-py -j "$(nproc)"
  fi
  export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
  DIFFTREE_RT_EXT="$(ls "$PWD"/build/gpu-py/_C*.so | head -n 1)"
  export DIFFTREE_RT_EXT
fi
{ python -m difftree_rt info; nvidia-smi; } >"$OUT/info-stage$stage.txt" 2>&1

case "$stage" in
  1)
    step 120 ops_cuda "${PYTEST[@]}" tests/ops -m cuda
    step 90 tree_attention "${PYTEST[@]}" tests/ops/test_tree_attention.py tests/ops/test_cuda_tree_attention.py
    step 120 graph_runner "${PYTEST[@]}" tests/engine/test_graph_runner.py
    step 120 memcheck compute-sanitizer --tool memcheck "${PYTEST[@]}" -x \
      tests/ops/test_cuda_kernels.py tests/ops/test_cuda_ops.py -k "graph or fuzz or odd"
    ;;
  2)
    step 240 engine_cuda "${PYTEST[@]}" tests/engine -m cuda
    step 120 policies_engine "${PYTEST[@]}" tests/policies/test_d2sd_engine.py tests/policies/test_taps_engine.py -m cuda
    step 120 bench_kernels python bench/bench_kernels.py
    step 120 bench_tree_attention python bench/bench_tree_attention.py
    ;;
  3)
    step 200 bench_graph_06b python bench/bench_graph_round.py --models qwen3-0.6b --runs 2
    step 200 bench_graph_8b python bench/bench_graph_round.py --models qwen3-8b --runs 2 --budgets 16 64
    step 150 bench_graph_batch python bench/bench_graph_round.py --models qwen3-8b --batch-sizes 4 8 \
      --batch-only --runs 1 --budgets 16
    if [ -d build/ref/ddtree ]; then
      step 300 ref_loop_8b python bench/bench_reference_loop.py --reference build/ref/ddtree \
        --models qwen3-8b --prompts 2 --runs 1 --budgets 16 64
    else
      echo "build/ref/ddtree not carried: side-by-side skipped" | tee -a "$LOG"
    fi
    ;;
  new)
    step 120 presto_cuda "${PYTEST[@]}" tests/ops/test_cuda_presto.py tests/ops/test_cuda_policies.py
    step 200 graph_cuda "${PYTEST[@]}" tests/engine/test_graph_batch.py \
      tests/engine/test_graph_runner.py tests/engine/test_cuda_engine.py -m cuda
    step 90 memcheck_presto compute-sanitizer --tool memcheck "${PYTEST[@]}" -x \
      tests/ops/test_cuda_presto.py -k "graph or overflow or small"
    ;;
  newbench)
    step 150 bench_graph_batch python bench/bench_graph_round.py --models qwen3-8b --batch-sizes 4 \
      --batch-only --runs 1 --budgets 16
    step 240 bench_graph_ar python bench/bench_graph_round.py --models qwen3-8b --runs 1 \
      --budgets 16 --contexts 1024 --nodes 0 16 --extra-policies caddtree taps d2sd presto
    step 150 bench_kernels python bench/bench_kernels.py --quick --topk-splits 1 8 16 0
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
tar czf "$OUT/results-stage$stage.tgz" bench/results/*.json 2>/dev/null || true
echo "stage $stage done; log $LOG, result JSONs in $OUT/results-stage$stage.tgz"
