#!/usr/bin/env bash
# Usage: scripts/bench_baseline.sh REV [DIR]
#
# Prepares a checkout of revision REV to benchmark against: a git worktree of REV in DIR (default
# /tmp/difftree_rt-baseline-<sha>) with its compiled core built inside it
# (DIR/python/difftree_rt/_C*.so). Prints DIR on stdout, for
#   python -m difftree_rt bench --baseline "$(scripts/bench_baseline.sh REV)" ...
# Nothing is installed: the extension comes out of a wheel built with `pip wheel` into a temporary
# directory, so the active (editable) install of this checkout keeps pointing where it did.
# Re-running with the same REV reuses the worktree and its build. DIFFTREE_CUDA=ON/OFF/AUTO
# overrides the CUDA kernels choice (default as scripts/setup.sh: ON when nvcc is found; a CPU
# comparison builds faster with OFF). PYTHON selects the interpreter (default python3): it must be
# the one the bench runs with (the extension is built for it).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
sha=$(git -C "$repo" rev-parse --verify --quiet "$1^{commit}") || {
  echo "bench_baseline.sh: error: unknown revision $1" >&2
  exit 2
}
dir=${2:-/tmp/difftree_rt-baseline-${sha:0:12}}

if [ -e "$dir/.git" ]; then
  have=$(git -C "$dir" rev-parse HEAD)
  if [ "$have" != "$sha" ]; then
    echo "bench_baseline.sh: error: $dir is a checkout of ${have:0:12}, not ${sha:0:12} ($1)" >&2
    exit 2
  fi
  echo "[bench_baseline] reusing the worktree $dir (${sha:0:12})" >&2
elif [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
  echo "bench_baseline.sh: error: $dir exists and is not a checkout; pass another DIR" >&2
  exit 2
else
  echo "[bench_baseline] git worktree add $dir ${sha:0:12} ($1)" >&2
  git -C "$repo" worktree add --detach "$dir" "$sha" >&2
fi

ext_suffix=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
if [ -e "$dir/python/difftree_rt/_C$ext_suffix" ]; then
  echo "[bench_baseline] already built: $dir/python/difftree_rt/_C$ext_suffix" >&2
else
  if [ -z "${DIFFTREE_CUDA:-}" ]; then
    if command -v nvcc >/dev/null 2>&1; then DIFFTREE_CUDA=ON; else DIFFTREE_CUDA=OFF; fi
  fi
  wheels=$(mktemp -d /tmp/difftree_rt-baseline-wheel.XXXXXX)
  trap 'rm -rf "$wheels"' EXIT
  echo "[bench_baseline] building the extension (DIFFTREE_CUDA=$DIFFTREE_CUDA, pip wheel;" \
    "build directory $dir/build)" >&2
  DIFFTREE_CUDA=$DIFFTREE_CUDA "$PY" -m pip wheel -q --no-deps --no-build-isolation \
    --wheel-dir "$wheels" "$dir" >&2
  # Only the compiled core is taken from the wheel; the Python sources are the worktree's own.
  "$PY" - "$wheels" "$dir/python/difftree_rt" <<'EOF'
import sys, zipfile
from pathlib import Path

wheels, dest = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = wheels.glob("difftree_rt-*.whl")
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.startswith("difftree_rt/_C")]
    if not names:
        sys.exit(f"bench_baseline.sh: error: {wheel.name} holds no difftree_rt/_C extension")
    for name in names:
        (dest / Path(name).name).write_bytes(zf.read(name))
        print(f"[bench_baseline] extension: {dest / Path(name).name}", file=sys.stderr)
EOF
fi
echo "[bench_baseline] use: python -m difftree_rt bench --baseline $dir ..." >&2
echo "$dir"
