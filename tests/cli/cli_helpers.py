"""Run ``python -m difftree_rt ...`` in a subprocess and report what it imported.

The command runs through :mod:`runpy` exactly as ``python -m`` does; at exit the child writes
which heavy modules it had imported, so a test can tell that an argument error was reported
before any model was loaded (no ``transformers``) or even before torch was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_CHILD = """
import atexit, json, runpy, sys
report, argv = sys.argv[1], sys.argv[2:]
def _write():
    with open(report, "w") as f:
        json.dump({m: m in sys.modules for m in ("torch", "transformers")}, f)
atexit.register(_write)
sys.argv = ["difftree-rt", *argv]
runpy.run_module("difftree_rt", run_name="__main__", alter_sys=True)
"""


@dataclass
class CliRun:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    imported: dict[str, bool]


def run_cli(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> CliRun:
    """``python -m difftree_rt *args`` in a fresh interpreter (timeout 120 s)."""
    report = tmp_path / f"imports-{time.monotonic_ns()}.json"
    full_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(report), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        cwd=cwd,
    )
    seconds = time.perf_counter() - t0
    imported = json.loads(report.read_text()) if report.exists() else {}
    return CliRun(proc.returncode, proc.stdout, proc.stderr, seconds, imported)


def assert_usage_error(run: CliRun, argument: str, *, torch_ok: bool = False) -> None:
    """Exit code 2, exactly one line on stderr that names ``argument``, no traceback, and
    nothing heavy imported (``torch_ok``: torch may be imported, transformers never)."""
    lines = run.stderr.strip().splitlines()
    assert run.rc == 2, (run.rc, run.stdout[-2000:], run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr
    assert len(lines) == 1, run.stderr
    assert "error" in lines[0] and argument in lines[0], lines[0]
    assert run.imported.get("transformers") is False, run.imported
    if not torch_ok:
        assert run.imported.get("torch") is False, run.imported
