"""Policies sit below the engine: the engine imports ``difftree_rt.policies``, never the reverse.

Two checks: a static scan of every ``import`` in ``policies/`` (function-local ones included,
which a plain import would not run), and a fresh interpreter that imports every policies module
and builds every registered policy, then finds no ``difftree_rt.engine`` module loaded."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.layering import imported, module_name

import difftree_rt.policies

_ROOT = pathlib.Path(difftree_rt.policies.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    return module_name(_ROOT, "difftree_rt.policies", path)


def _imported(path: pathlib.Path) -> list[str]:
    return imported(_ROOT, "difftree_rt.policies", path, members=True)


def test_no_policies_module_imports_the_engine() -> None:
    files = sorted(_ROOT.rglob("*.py"))
    assert len(files) > 5
    bad = {
        str(f.relative_to(_ROOT)): name
        for f in files
        for name in _imported(f)
        if name == "difftree_rt.engine" or name.startswith("difftree_rt.engine.")
    }
    assert bad == {}


def test_importing_and_building_every_policy_loads_no_engine_module() -> None:
    modules = [_module_name(f) for f in sorted(_ROOT.rglob("*.py"))]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "from difftree_rt.policies import POLICIES, make_policy\n"
        "for name in sorted(POLICIES):\n"
        "    make_policy(name, 8)\n"
        "print(sorted(m for m in sys.modules if m.startswith('difftree_rt.engine')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
