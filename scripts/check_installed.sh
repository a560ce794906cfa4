#!/usr/bin/env bash
# Check a non-editable install of difftree_rt as a user runs it: from outside the source tree,
# with the reference pair found as installed package data.
#
# Usage: scripts/check_installed.sh [PYTHON]
#   PYTHON: the interpreter of the environment holding the install (default:
#   $DIFFTREE_RT_INSTALLED_PYTHON, else python). Its bin/ must hold the difftree-rt script.
#   Exit code 0 when every check passes; the first failing check's output otherwise.
#
# Making such an install (torch and transformers from the machine, CUDA kernels off; a build
# dir of its own so that the editable build's CMake cache is left alone):
#   DIFFTREE_CUDA=OFF python -m pip wheel --no-build-isolation --no-deps \
#       -Cbuild-dir=/tmp/wheel-build -w /tmp/wheel .
#   python -m venv /tmp/venv
#   python -c 'import site; print(site.getsitepackages()[0])' \
#       > "$(/tmp/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/system.pth"
#   /tmp/venv/bin/pip install --no-deps /tmp/wheel/difftree_rt-*.whl
#   scripts/check_installed.sh /tmp/venv/bin/python
# The system.pth line puts the machine's site-packages on the path without running its .pth
# files: with `venv --system-site-packages` an editable install of difftree_rt there would
# shadow the wheel (its import hook runs first), which the first check below reports.
set -euo pipefail

PY="${1:-${DIFFTREE_RT_INSTALLED_PYTHON:-python}}"
PY="$(command -v "$PY")"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLI="$(dirname "$PY")/difftree-rt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"  # nothing of the source tree on the path or under the working directory
unset DIFFTREE_RT_PAIR PYTHONPATH

step() { printf '== %s\n' "$*"; }
fail() { printf 'check_installed: FAILED: %s\n' "$*" >&2; exit 1; }

step "the installed package, not the source tree"
where="$("$PY" -c 'import difftree_rt, os; print(os.path.realpath(difftree_rt.__file__))')"
case "$where" in "$SRC"/*) fail "difftree_rt imports from the source tree ($where)";; esac
echo "$where"

step "the reference pair is package data"
"$PY" - <<'EOF' || fail "no reference pair in the installed package"
from difftree_rt.cli.pair import _installed_pair_dir, find_pair_dir, pair_available
shipped = _installed_pair_dir()
assert shipped is not None and pair_available(shipped), shipped
assert find_pair_dir() == shipped, (find_pair_dir(), shipped)
assert (shipped / "prompts.json").is_file() and (shipped / "vp_drafter" / "config.json").is_file()
print(shipped)
EOF

step "python -m difftree_rt info"
"$PY" -m difftree_rt info || fail "info"

step "difftree-rt generate --max-new-tokens 8 (the shipped pair)"
[ -x "$CLI" ] || fail "no difftree-rt script at $CLI"
"$CLI" generate --max-new-tokens 8 --device cpu --json > gen.json || fail "generate"
"$PY" - <<'EOF' || fail "generate produced no tokens"
import json
out = json.load(open("gen.json"))
assert 1 <= out["new_tokens"] <= 8 and out["completion"], out
print(f"{out['new_tokens']} tokens, tau {out['tau']:.2f}: {out['completion']!r}")
EOF

step "a usage error is one line, exit code 2"
set +e
"$CLI" generate --dtype float99 2> err.txt
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "exit code $rc for --dtype float99"
[ "$(wc -l < err.txt)" -eq 1 ] || fail "not one line: $(cat err.txt)"
grep -q -- "--dtype" err.txt || fail "the error does not name --dtype: $(cat err.txt)"
cat err.txt

echo "check_installed: OK ($PY)"
