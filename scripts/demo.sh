#!/usr/bin/env bash
# The main job: set-up, then the demo (tree selection on realistic shapes, with timings).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m difftree_rt demo "$@"
