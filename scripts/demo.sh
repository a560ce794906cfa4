#!/usr/bin/env bash
# The main job: set-up, then the end-to-end demo: speculative decoding of the shipped reference
# pair (assets/reference_pair: a small Qwen3 code model + its DFlash drafter), streamed, with τ,
# tokens/s and the speedup over the target alone measured in the same run. Without the pair it
# says so and runs the tree-selection demo (`difftree-rt demo-select`) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m difftree_rt demo "$@"
