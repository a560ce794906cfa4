"""``difftree_rt.reference`` is the oracle: it imports torch, numpy and ``difftree_rt.tree``
only, never the compiled extension, ``ops``, the policies, the models or the engine, so a bug
there cannot leak into the definition the C++ / CUDA paths are checked against.

Two checks as in tests/policies/test_layering.py: a static scan of every ``import`` in
``reference/`` (function-local ones included), and a fresh interpreter that imports every
reference module and then finds none of those modules loaded. The few contract types the
reference defines again (``MIN_LOGPROB``, ``WalkResult``, ``TapsPool``) are checked against the
ones the ops and policies use."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys

from tests.layering import imported, module_name

import difftree_rt.reference

_ROOT = pathlib.Path(difftree_rt.reference.__file__).parent
_ALLOWED_ROOTS = {"__future__", "collections", "dataclasses", "math", "typing", "numpy", "torch"}
_FORBIDDEN = (
    "difftree_rt.engine",
    "difftree_rt.policies",
    "difftree_rt.models",
    "difftree_rt.ops",
    "difftree_rt._ext",
    "difftree_rt._C",
)


def _module_name(path: pathlib.Path) -> str:
    return module_name(_ROOT, "difftree_rt.reference", path)


def _imported(path: pathlib.Path) -> list[str]:
    return imported(_ROOT, "difftree_rt.reference", path)


def test_reference_imports_only_torch_numpy_and_the_tree() -> None:
    files = sorted(_ROOT.rglob("*.py"))
    assert len(files) >= 9
    bad = {}
    for f in files:
        for name in _imported(f):
            ok = (
                name.split(".")[0] in _ALLOWED_ROOTS
                or name == "difftree_rt.tree"
                or name == "difftree_rt.reference"
                or name.startswith("difftree_rt.reference.")
            )
            if not ok:
                bad[str(f.relative_to(_ROOT))] = name
    assert bad == {}


def test_importing_the_reference_loads_no_runtime_module() -> None:
    modules = [_module_name(f) for f in sorted(_ROOT.rglob("*.py"))]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({_FORBIDDEN!r}))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_reference_contract_types_match_the_runtime_ones() -> None:
    from difftree_rt import ops, reference
    from difftree_rt.policies.taps import TapsPool

    assert reference.MIN_LOGPROB == ops.MIN_LOGPROB
    assert reference.WalkResult._fields == ops.WalkResult._fields
    ref_fields = [(f.name, f.type) for f in dataclasses.fields(reference.taps.TapsPool)]
    assert ref_fields == [(f.name, f.type) for f in dataclasses.fields(TapsPool)]


def test_old_names_still_resolve() -> None:
    from difftree_rt import reference
    from difftree_rt.reference.kv_commit import kv_commit_reference

    for name in (
        "ddtree_select",
        "ddtree_select_from_candidates",
        "kv_commit",
        "node_select",
        "topk_logprobs",
        "tree_from_parents",
        "tree_walk",
        "philox4x32_10",
        "gumbel_noise",
    ):
        assert callable(getattr(reference, name)), name
    assert reference.kv_commit_reference is kv_commit_reference
    for module in ("policies", "taps", "d2sd", "attention"):
        assert getattr(reference, module).__name__ == f"difftree_rt.reference.{module}"
