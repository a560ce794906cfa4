"""bench/bench_reference_loop.py without the published reference: argument handling, clear
errors for a missing/incomplete/unimportable checkout, the timing wrappers, and the ``--dry-run``
CPU smoke run of our side. With ``DIFFTREE_DDTREE_REF=/path/to/ddtree-checkout`` set, one more
test runs both sides on the tiny pair and checks acceptance parity (never needed in CI)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench/

from bench import bench_reference_loop as brl


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what loading a (fake) reference adds to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in (*brl.REFERENCE_MODULES, *brl.STUBBABLE):
            del sys.modules[name]


def fake_checkout(root: Path, ddtree_src: str = "", utils_src: str = "") -> Path:
    """A directory with the reference's file layout and the given module bodies."""
    (root / "model").mkdir(parents=True)
    (root / "ddtree.py").write_text(
        ddtree_src or "def ddtree_generate(**kwargs):\n    return None\n"
    )
    (root / "dflash.py").write_text("def dflash_generate(**kwargs):\n    return None\n")
    (root / "model" / "__init__.py").write_text(
        "from .dflash import DFlashDraftModel\nfrom .utils import sample\n"
    )
    (root / "model" / "dflash.py").write_text("class DFlashDraftModel:\n    pass\n")
    (root / "model" / "utils.py").write_text(utils_src or "def sample(x):\n    return x\n")
    return root


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        brl.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_reference_required(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_main(["--tiny"], capsys)
    assert "--reference PATH is required" in err and "--dry-run" in err


def test_sides_without_ref_need_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_main(["--tiny", "--reference", "x", "--sides", "eager"], capsys)
    assert "needs --dry-run" in err


def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_main(["--tiny", "--reference", str(tmp_path / "nowhere")], capsys)
    assert "no such directory" in err and "liranringel/ddtree" in err


def test_not_a_checkout(tmp_path: Path) -> None:
    (tmp_path / "ddtree.py").write_text("")
    with pytest.raises(brl.ReferenceUnavailable, match=r"missing dflash\.py, model/__init__"):
        brl.load_reference(tmp_path)
    file = tmp_path / "ddtree.py"
    with pytest.raises(brl.ReferenceUnavailable, match="not a directory"):
        brl.load_reference(file)


def test_import_error_names_the_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_imports: None
) -> None:
    root = fake_checkout(tmp_path / "ref", ddtree_src="import not_a_real_module_xyz\n")
    with pytest.raises(brl.ReferenceUnavailable, match="'not_a_real_module_xyz' is missing"):
        brl.load_reference(root)
    err = run_main(["--tiny", "--reference", str(root)], capsys)
    assert "not_a_real_module_xyz" in err


def test_missing_symbol(tmp_path: Path, clean_imports: None) -> None:
    root = fake_checkout(tmp_path / "ref", ddtree_src="x = 1\n")
    with pytest.raises(brl.ReferenceUnavailable, match=r"no ddtree\.ddtree_generate"):
        brl.load_reference(root)


@pytest.mark.skipif(
    all(__import__("importlib").util.find_spec(m) is not None for m in brl.STUBBABLE),
    reason="datasets and loguru are both installed: nothing to stub",
)
def test_unused_imports_are_stubbed(tmp_path: Path, clean_imports: None) -> None:
    root = fake_checkout(
        tmp_path / "ref",
        ddtree_src="from loguru import logger\ndef ddtree_generate(**kw):\n    return None\n",
        utils_src="from datasets import load_dataset\ndef sample(x):\n    return x\n",
    )
    ref = brl.load_reference(root)
    assert set(ref.stubs) <= set(brl.STUBBABLE) and ref.stubs
    assert ref.describe()["commit"].startswith("unknown")
    for name in ref.stubs:
        del sys.modules[name]
    for name in brl.REFERENCE_MODULES:
        sys.modules.pop(name, None)
    with pytest.raises(brl.ReferenceUnavailable, match="drop --no-stub"):
        brl.load_reference(root, stub_missing=False)


def test_round_clock_wraps_outermost_calls_and_restores() -> None:
    class Inner(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * 2

    model = Outer()
    clock = brl.RoundClock(cuda=False)
    clock.wrap(model.inner, "forward", "draft", starts_round=True)
    clock.wrap(model, "forward", "verify")
    for _ in range(3):  # three rounds: a draft, then a verify that calls the draft inside
        model.inner(torch.zeros(1))
        assert model(torch.zeros(1)).item() == 2
    clock.finish()
    assert len(clock.starts) == 3
    assert [(r, k) for r, k, _, _ in clock.intervals] == [
        (0, "draft"), (0, "verify"), (1, "draft"), (1, "verify"), (2, "draft"), (2, "verify"),
    ]  # fmt: skip
    req = clock.request()
    assert req["rounds"] == 3 and len(req["round_samples"]) == 2
    assert req["ms_per_round"] >= req["forward_ms_per_round"] > 0
    clock.restore()
    assert "forward" not in vars(model) and "forward" not in vars(model.inner)


def test_legacy_crop_cache() -> None:
    cache = brl.legacy_crop_cache()()
    kv = torch.arange(5.0).view(1, 1, 5, 1)
    cache.update(kv, kv, 0)
    cache.crop(7)  # longer than the cache: nothing
    assert cache.get_seq_length() == 5
    cache.crop(3)  # an absolute length, as the reference means it
    assert cache.layers[0].keys.flatten().tolist() == [0.0, 1.0, 2.0]
    cache.crop(-1)  # the current meaning still works
    assert cache.get_seq_length() == 2


def test_dry_run_tiny(tmp_path: Path) -> None:
    path = brl.main(["--dry-run", "--tiny", "--out-dir", str(tmp_path)])
    result = json.loads(path.read_text())
    assert result["reference"] is None and result["stamp"]["git_sha"]
    (model,) = result["models"]
    assert model["sides"] == ["eager", "graph"]
    assert [(r["policy"], r["budget"]) for r in model["runs"]] == [("chain", 7), ("ddtree", 8)]
    for r in model["runs"]:
        for side in ("eager", "graph"):
            s = r["sides"][side]
            assert s["requests"] == 2 and s["rounds"] > 2
            assert s["ms_per_round"]["median"] > 0 and s["forward_ms_per_round"]["median"] > 0
        (par,) = r["parity"].values()
        assert all(p["tokens_equal"] and p["accepted_equal"] for p in par)


@pytest.mark.skipif(
    not os.environ.get("DIFFTREE_DDTREE_REF"),
    reason="set DIFFTREE_DDTREE_REF to a checkout of liranringel/ddtree",
)
@pytest.mark.parametrize("model", ["tiny", brl.PAIR_NAME])
def test_reference_tiny_parity(tmp_path: Path, clean_imports: None, model: str) -> None:
    """Random tiny pair, and the shipped trained pair (real acceptance, tau > 1)."""
    ref = os.environ["DIFFTREE_DDTREE_REF"]
    argv = ["--reference", ref, "--tiny", "--models", model, "--out-dir", str(tmp_path)]
    if model == brl.PAIR_NAME:
        if not (brl.Path(brl.__file__).parents[1] / "assets/reference_pair/drafter").is_dir():
            pytest.skip("the shipped reference pair is not there")
        argv += ["--max-new-tokens", "32"]
    path = brl.main(argv)
    result = json.loads(path.read_text())
    assert len(result["reference"]["commit"]) == 40
    (res,) = result["models"]
    assert res["sides"] == ["ref", "eager", "graph"]
    for r in res["runs"]:
        assert r["speedup_eager"]["round"] > 0 and r["speedup_graph"]["round"] > 0
        for rows in r["parity"].values():  # fp32 on CPU: the same tokens and accepted lengths
            assert all(p["tokens_equal"] and p["accepted_equal"] for p in rows), rows
        if model == brl.PAIR_NAME:
            assert r["sides"]["ref"]["tau"] > 1.2 and r["sides"]["eager"]["tau"] > 1.2
