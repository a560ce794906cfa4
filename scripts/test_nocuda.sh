#!/usr/bin/env bash
# The configuration most CPU users have, installed the way they install it: a NON-editable wheel
# built with DIFFTREE_CUDA=OFF (its own build directory, apart from the editable build), installed
# into a fresh virtual environment and used from outside the source tree: `python -m difftree_rt
# info`, the CLI, and the tests that exercise the compiled core (tests/ops) imported from the
# source tree against the installed package. (tests/emu builds the CUDA kernels from source on
# the host: nothing in it depends on the wheel, so the main pytest run covers it once.) scripts/check_installed.sh checks the
# install itself (package data, info, the CLI).
#
# The venv sees the packages of $PYTHON's environment (torch, transformers, pytest) through a .pth
# naming its site-packages directories, not through --system-site-packages: that flag would also
# run the editable install's own .pth, which puts python/ on sys.path and an import hook in front
# of the installed wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=build/wheel-nocuda
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
VENV=$TMP/venv  # outside the source tree, like a user's

echo "[nocuda] building the wheel (DIFFTREE_CUDA=OFF, build dir $OUT)"
rm -rf "$OUT/dist"
DIFFTREE_CUDA=OFF "$PY" -m pip wheel -q --no-build-isolation --no-deps \
  -Ccmake.define.DIFFTREE_CUDA=OFF -Cbuild-dir="$OUT" -w "$OUT/dist" .
WHEEL=$(ls "$OUT"/dist/difftree_rt-*.whl)

echo "[nocuda] installing $(basename "$WHEEL") into $VENV"
"$PY" -m venv --clear --without-pip "$VENV"
VPY=$VENV/bin/python
"$PY" - "$ROOT" >"$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/system-site.pth" <<'EOF'
import os, sys
root = os.path.realpath(sys.argv[1])
for p in sys.path:  # site directories only, none inside the source tree
    if p.endswith(("site-packages", "dist-packages")) and not os.path.realpath(p).startswith(root):
        print(p)
EOF
"$VPY" -m pip install -q --no-deps --ignore-installed "$WHEEL"

bash "$ROOT/scripts/check_installed.sh" "$VPY"

cd "$TMP"
# tests/ imports as a package from the repository root; the package itself lives in python/, so
# this puts the test helpers on the path, not the source package.
export PYTHONPATH=$ROOT
"$VPY" - "$ROOT" <<'EOF'
import sys
from pathlib import Path

import difftree_rt
from difftree_rt import _C  # noqa: F401  (the compiled core of the wheel)

where = Path(difftree_rt.__file__).resolve()
assert not where.is_relative_to(Path(sys.argv[1], "python").resolve()), f"source tree: {where}"
for path in (where, Path(_C.__file__).resolve()):
    assert path.is_relative_to(Path(sys.prefix).resolve()), f"{path} is not in the venv"
print(f"[nocuda] difftree_rt {difftree_rt.__version__} from {where.parent}")
EOF
echo "[nocuda] pytest tests/ops against the installed wheel"
"$VPY" -m pytest -q -p no:cacheprovider --rootdir="$ROOT" -c "$ROOT/pyproject.toml" \
  "$ROOT/tests/ops" -k "not torch_compile"
