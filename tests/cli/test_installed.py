"""The CLI of a non-editable install, run from outside the source tree
(``scripts/check_installed.sh``). Skipped unless ``DIFFTREE_RT_INSTALLED_PYTHON`` names the
interpreter of such an install; the script's header says how to make one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

PYTHON = os.environ.get("DIFFTREE_RT_INSTALLED_PYTHON")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_installed.sh"


@pytest.mark.skipif(not PYTHON, reason="set DIFFTREE_RT_INSTALLED_PYTHON to an installed python")
def test_installed_cli_runs_outside_the_source_tree() -> None:
    out = subprocess.run(
        ["bash", str(SCRIPT), str(PYTHON)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "check_installed: OK" in out.stdout
