#!/usr/bin/env python3
"""Reproduce assets/reference_pair (see python/difftree_rt/train/reference_pair.py).

# CPU, ~1 h in 9-minute chunks (what ships):
while python scripts/train_reference_pair.py --preset cpu --threads 1; [ $? -eq 75 ]; do :; done
# GPU, a better pair, each command < 10 min:
while python scripts/train_reference_pair.py --preset gpu --device cuda; [ $? -eq 75 ]
do :; done
# then the variable-prefix drafter for D²SD (CPU, ~25 min of 1-thread training, into
# assets/reference_pair/vp_drafter; initialised from the shipped drafter):
while python scripts/train_reference_pair.py --preset cpu --threads 1 --vp; [ $? -eq 75 ]
do :; done
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from difftree_rt.train.reference_pair import main

if __name__ == "__main__":
    raise SystemExit(main())
