"""scripts/test.sh's stage runner: each stage announced and timed, a failing command inside a
stage stops it and the run (with its exit code), and a summary table lists every stage run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "test.sh"


def _run_stages(body: str) -> subprocess.CompletedProcess[str]:
    """Runs ``body`` after test.sh's ``summary``/``stage`` definitions (and its trap)."""
    text = SCRIPT.read_text(encoding="utf-8")
    defs = [
        re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", text, re.M | re.S)
        for name in ("summary", "stage")
    ]
    assert all(defs), "test.sh defines summary() and stage()"
    prelude = (
        "set -euo pipefail\nSTAGE_NAMES=(); STAGE_TIMES=(); STAGE_RESULTS=(); T_START=$SECONDS\n"
    )
    script = prelude + "".join(d.group(0) for d in defs if d) + "trap summary EXIT\n" + body
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_stages_are_timed_and_a_failure_stops_the_run() -> None:
    out = _run_stages(
        "two() { echo first; false; echo after-the-failure; }\n"
        'stage "one" echo hello\n'
        'stage "two" two\n'
        'stage "three" echo never\n'
    )
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert "[test] one ..." in lines and "hello" in lines
    assert any(re.fullmatch(r"\[test\] one: \d+ s", line) for line in lines)
    assert "first" in lines and "after-the-failure" not in out.stdout  # errexit inside a stage
    assert any(line.startswith("[test] two: FAILED (exit 1)") for line in lines)
    assert "never" not in out.stdout and "[test] three" not in out.stdout
    table = lines[lines.index(next(x for x in lines if x.startswith("[test] summary"))) :]
    assert re.search(r"one\s+\d+ s\s+ok", table[1]) and re.search(r"two\s+\d+ s\s+FAILED", table[2])
    assert len(table) == 3


def test_quick_mode_and_pytest_arguments_are_wired() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    quick = text[text.index('if [ "$QUICK" = 0 ]; then') :]
    skipped = quick[: quick.index("\nfi\n")]
    for name in ("sanitize_build", "fuzz", "asan_python_ops", "test_nocuda.sh"):
        assert name in skipped, f"{name} must be skipped by --quick"
    assert 'stage "pytest" "$PY" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}"' in text
    assert "--quick" in (SCRIPT.parents[1] / "README.md").read_text(encoding="utf-8")
