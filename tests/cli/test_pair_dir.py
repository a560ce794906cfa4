"""Where the CLI finds the shipped reference pair: $DIFFTREE_RT_PAIR, then the installed
package data, then the source tree; never a path computed from where the code happens to be."""

from __future__ import annotations

from pathlib import Path

import pytest

from difftree_rt.cli import pair
from difftree_rt.cli.args import UsageError


def _fake_pair(root: Path) -> Path:
    for d in ("target", "drafter"):
        (root / d).mkdir(parents=True)
        (root / d / "config.json").write_text("{}")
    return root


def test_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _fake_pair(tmp_path / "env")
    monkeypatch.setenv(pair.PAIR_ENV, str(chosen))
    monkeypatch.setattr(pair, "_installed_pair_dir", lambda: _fake_pair(tmp_path / "installed"))
    assert pair.find_pair_dir() == chosen == pair.require_pair_dir()


def test_env_var_without_a_pair_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pair.PAIR_ENV, str(tmp_path))
    with pytest.raises(UsageError, match=pair.PAIR_ENV):
        pair.find_pair_dir()


def test_installed_package_data_before_the_source_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(pair.PAIR_ENV, raising=False)
    installed = _fake_pair(tmp_path / "site-packages" / "difftree_rt" / "assets" / "reference_pair")
    monkeypatch.setattr(pair, "_installed_pair_dir", lambda: installed)
    monkeypatch.setattr(pair, "_source_pair_dir", lambda: tmp_path / "no-source-tree")
    assert pair.find_pair_dir() == installed


def test_no_pair_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pair.PAIR_ENV, raising=False)
    monkeypatch.setattr(pair, "_installed_pair_dir", lambda: tmp_path / "a")
    monkeypatch.setattr(pair, "_source_pair_dir", lambda: tmp_path / "b")
    assert pair.find_pair_dir() is None
    with pytest.raises(UsageError, match="DIFFTREE_RT_PAIR"):
        pair.require_pair_dir()


def test_installed_location_is_inside_the_package() -> None:
    """``difftree_rt/assets/reference_pair`` of an installed difftree_rt (an editable install
    resolves it in site-packages, where its build installs the pair too)."""
    found = pair._installed_pair_dir()
    assert found is not None and found.is_absolute()
    assert found.parts[-3:] == ("difftree_rt", "assets", "reference_pair")
    assert found.parent.parent.is_dir()


def test_the_source_tree_pair_is_found() -> None:
    """In this checkout (editable install) the shipped pair resolves and is complete."""
    found = pair.find_pair_dir()
    assert found is not None and (found / "prompts.json").is_file()
