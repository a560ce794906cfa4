"""Every policy option is checked at construction: a wrong type is a ``TypeError``, a value out
of range a ``ValueError``, both naming the option; a cost table is a path to a JSON file or a
parsed table, never a file descriptor."""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from difftree_rt.policies import (
    POLICIES,
    CaDDTreePolicy,
    ChainPolicy,
    CostTable,
    D2SDPolicy,
    DDTreePolicy,
    DraftPolicy,
    PrestoPolicy,
    TapsPolicy,
    default_cost_table,
    load_cost_table,
    make_policy,
)

_ALL: list[Callable[..., DraftPolicy]] = [
    ChainPolicy,
    DDTreePolicy,
    CaDDTreePolicy,
    PrestoPolicy,
    TapsPolicy,
    D2SDPolicy,
]


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail instead of blocking (``open(0)`` reads stdin) when a check is missing."""

    def stop(*_: Any) -> None:
        raise TimeoutError("blocked: the option reached open()")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---- budget: every policy, every registry name ------------------------------------------------
@pytest.mark.parametrize("cls", _ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "budget, exc",
    [
        ("8", TypeError),
        (8.0, TypeError),
        (2.7, TypeError),
        (True, TypeError),
        (None, TypeError),
        (0, ValueError),
        (-1, ValueError),
        (4097, ValueError),
    ],
)
def test_budget_rejected(cls: Callable[..., DraftPolicy], budget: Any, exc: type) -> None:
    with pytest.raises(exc, match="budget"):
        cls(budget)


@pytest.mark.parametrize("cls", _ALL, ids=lambda c: c.__name__)
def test_budget_bounds_accepted(cls: Callable[..., DraftPolicy]) -> None:
    assert cls(1).budget == 1
    assert cls(np.int64(4096)).budget == 4096
    assert type(cls(np.int64(7)).budget) is int


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_make_policy_checks_budget(name: str) -> None:
    with pytest.raises(TypeError, match="budget"):
        make_policy(name, "64")
    with pytest.raises(ValueError, match="budget"):
        make_policy(name, 0)
    assert make_policy(name, 3).budget == 3


def test_unknown_policy_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="policy") as info:
        make_policy("ddtre", 8)
    for name in ["ar", *POLICIES]:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="policy"):
        make_policy(3, 8)  # type: ignore[arg-type]


def test_decoder_string_form() -> None:
    """``SpeculativeDecoder(policy=NAME, budget=...)``: an unknown name lists the known ones,
    a registered name gets the budget checked by the policy."""
    from engine_helpers import random_pair

    from difftree_rt import SpeculativeDecoder

    target, drafter = random_pair("qwen3")
    with pytest.raises(ValueError, match="policy") as info:
        SpeculativeDecoder(target, drafter, policy="ddtre", budget=8)
    assert all(name in str(info.value) for name in ["ar", *POLICIES])
    with pytest.raises((TypeError, ValueError), match="budget"):
        SpeculativeDecoder(target, drafter, policy="taps", budget=2.5)
    assert SpeculativeDecoder(target, drafter, policy="presto", budget=5).policy.budget == 5


# ---- per-policy options --------------------------------------------------------------------
_BAD_OPTIONS: list[tuple[Callable[..., DraftPolicy], dict[str, Any], type, str]] = [
    (CaDDTreePolicy, {"batch": "x"}, TypeError, "batch"),
    (CaDDTreePolicy, {"batch": 2.0}, TypeError, "batch"),
    (CaDDTreePolicy, {"batch": -3}, ValueError, "batch"),
    (CaDDTreePolicy, {"batch": 0}, ValueError, "batch"),
    (CaDDTreePolicy, {"truncate": "no"}, TypeError, "truncate"),
    (CaDDTreePolicy, {"truncate": 1}, TypeError, "truncate"),
    (PrestoPolicy, {"k": "x"}, TypeError, "k"),
    (PrestoPolicy, {"k": 3.0}, TypeError, "k"),
    (PrestoPolicy, {"k": -5}, ValueError, "k"),
    (PrestoPolicy, {"k": 0}, ValueError, "k"),
    (PrestoPolicy, {"lam": "a"}, TypeError, "lam"),
    (PrestoPolicy, {"lam": None}, TypeError, "lam"),
    (PrestoPolicy, {"lam": -0.1}, ValueError, "lam"),
    (PrestoPolicy, {"lam": math.inf}, ValueError, "lam"),
    (PrestoPolicy, {"lam": math.nan}, ValueError, "lam"),
    (PrestoPolicy, {"alpha": "1"}, TypeError, "alpha"),
    (PrestoPolicy, {"alpha": 0.0}, ValueError, "alpha"),
    (PrestoPolicy, {"alpha": math.inf}, ValueError, "alpha"),
    (PrestoPolicy, {"order": 2.0}, TypeError, "order"),
    (PrestoPolicy, {"order": True}, TypeError, "order"),
    (PrestoPolicy, {"order": 9}, ValueError, "order"),
    (TapsPolicy, {"width": "abc"}, TypeError, "width"),
    (TapsPolicy, {"width": 2.7}, TypeError, "width"),
    (TapsPolicy, {"width": 0}, ValueError, "width"),
    (TapsPolicy, {"width": -1}, ValueError, "width"),
    (TapsPolicy, {"pool_size": "16"}, TypeError, "pool_size"),
    (TapsPolicy, {"pool_size": 0}, ValueError, "pool_size"),
    (TapsPolicy, {"pool_size": 4097}, ValueError, "pool_size"),
    (TapsPolicy, {"scorer": 123}, TypeError, "scorer"),
    (TapsPolicy, {"scorer": object()}, TypeError, "scorer"),
    (TapsPolicy, {"scorer": "/nonexistent/scorer.pt"}, ValueError, "scorer"),
    (D2SDPolicy, {"k": True}, TypeError, "k"),
    (D2SDPolicy, {"k": 2.0}, TypeError, "k"),
    (D2SDPolicy, {"k": 0}, ValueError, "k"),
    (D2SDPolicy, {"alternative": "no"}, TypeError, "alternative"),
    (D2SDPolicy, {"vp_drafter": "drafter"}, TypeError, "vp_drafter"),
]


@pytest.mark.parametrize(
    "cls, kwargs, exc, name",
    _BAD_OPTIONS,
    ids=[f"{c.__name__}-{k}" for c, k, _, _ in _BAD_OPTIONS],
)
def test_bad_option_rejected_at_construction(
    cls: Callable[..., DraftPolicy], kwargs: dict[str, Any], exc: type, name: str
) -> None:
    with pytest.raises(exc, match=rf"\b{name}\b"):
        cls(8, **kwargs)


def test_good_options_are_kept() -> None:
    p = PrestoPolicy(8, lam=0, order=np.int64(2), alpha=1, k=np.int32(3))
    assert (p.lam, p.order, p.alpha, p.k) == (0.0, 2, 1.0, 3)
    assert all(
        type(v) is t for v, t in zip((p.lam, p.order, p.alpha, p.k), (float, int, float, int))
    )
    assert PrestoPolicy(8).k is None
    t = TapsPolicy(8, width=3, pool_size=5, scorer="marginal")
    assert (t.width, t.pool_size, t.scorer) == (3, 5, "marginal")
    # None keeps the documented defaults: width = budget, pool_size = min(2 * budget, 4096).
    t = TapsPolicy(3000)
    assert (t.width, t.pool_size) == (3000, 4096)
    c = CaDDTreePolicy(8, batch=np.int64(4), truncate=False)
    assert (c.batch, c.truncate) == (4, False)
    d = D2SDPolicy(8, k=2, alternative=False)
    assert (d.k, d.alternative) == (2, False)


def test_taps_scorer_object_needs_log_qc() -> None:
    class Scorer:
        def log_qc(self, *args: Any) -> None: ...

    s = Scorer()
    assert TapsPolicy(8, scorer=s).scorer is s


# ---- cost tables ---------------------------------------------------------------------------
@pytest.mark.parametrize("table", [0, 5, -1, True, 3.5, b"table.json", ["nodes"]])
def test_cost_table_must_be_a_path_or_a_table(table: Any, no_hang: None) -> None:
    with pytest.raises(TypeError, match="cost_table"):
        CaDDTreePolicy(32, cost_table=table)


def _write(tmp_path: pathlib.Path, obj: Any, name: str = "cost.json") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_cost_table_path_forms(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cost.json"
    default_cost_table().save(path)
    for form in (path, str(path)):
        table = CaDDTreePolicy(32, cost_table=form).table
        assert table.nodes == default_cost_table().nodes
    parsed = json.loads(path.read_text())
    assert CaDDTreePolicy(32, cost_table=parsed).table.contexts == default_cost_table().contexts
    given = default_cost_table()
    assert CaDDTreePolicy(32, cost_table=given).table is given


def test_cost_table_missing_or_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"cost_table.*does not exist"):
        CaDDTreePolicy(32, cost_table=tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"cost_table.*not a file"):
        CaDDTreePolicy(32, cost_table=tmp_path)


def test_cost_table_bad_json_names_the_path(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path, "{not json")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        CaDDTreePolicy(32, cost_table=path)
    assert os.fspath(path) in str(info.value)


def test_cost_table_json_list(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path, [1, 2, 3])
    with pytest.raises(ValueError, match="JSON object") as info:
        CaDDTreePolicy(32, cost_table=path)
    assert os.fspath(path) in str(info.value)


def _good() -> dict[str, Any]:
    return {
        "format": "difftree_rt.cost_table/1",
        "unit": "ms",
        "nodes": [0, 4, 16],
        "contexts": [0, 1024],
        "batches": [1],
        "verify": [[[1.0, 1.5, 3.0], [1.2, 1.8, 3.5]]],
        "draft": [[0.3, 0.4]],
        "meta": {"device": "cpu"},
    }


@pytest.mark.parametrize(
    "field, value",
    [
        ("nodes", "0,4,16"),
        ("nodes", [0, 4.5, 16]),
        ("nodes", [0, True, 16]),
        ("contexts", None),
        ("contexts", [0, "1024"]),
        ("batches", [1.0]),
        ("verify", "fast"),
        ("verify", [[[1.0, "x", 3.0], [1.2, 1.8, 3.5]]]),
        ("verify", [[[1.0, 1.5], [1.2, 1.8]]]),
        ("draft", [[0.3, None]]),
        ("draft", 0.3),
        ("unit", 5),
        ("meta", ["cpu"]),
        ("format", "something/1"),
    ],
)
def test_cost_table_schema_names_the_field(tmp_path: pathlib.Path, field: str, value: Any) -> None:
    obj = _good()
    if value is None:
        del obj[field]
    else:
        obj[field] = value
    path = _write(tmp_path, obj)
    with pytest.raises(ValueError, match=rf"\b{field}\b") as info:
        CaDDTreePolicy(32, cost_table=path)
    assert os.fspath(path) in str(info.value)
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        CostTable.from_dict(obj)


def test_cost_table_good_file_loads(tmp_path: pathlib.Path) -> None:
    table = load_cost_table(_write(tmp_path, _good()))
    assert table.nodes == [0, 4, 16] and table.unit == "ms" and table.meta == {"device": "cpu"}
    assert CostTable.load(_write(tmp_path, _good(), "b.json")).draft == [[0.3, 0.4]]
