"""Cost tables: the monotone-convex fit, interpolation/extrapolation, JSON round trip, θ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difftree_rt.policies import CostTable, default_cost_table, fit_monotone_convex
from difftree_rt.policies.cost import theta


def _is_monotone_convex(x: list[float], y: list[float], tol: float = 1e-9) -> bool:
    s = np.diff(y) / np.diff(x)
    scale = max(1.0, float(np.abs(y).max()))
    return bool((s >= -tol * scale).all() and (np.diff(s) >= -tol * scale).all())


@pytest.mark.parametrize("seed", range(40))
def test_fit_is_nondecreasing_convex_and_least_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 16))
    x = np.cumsum(rng.integers(1, 60, m)).astype(float)
    y = rng.normal(size=m) * 3 + 0.01 * x
    f = np.asarray(fit_monotone_convex(x.tolist(), y.tolist()))
    assert _is_monotone_convex(x.tolist(), f.tolist())
    # Optimality against random feasible competitors (a nondecreasing convex sequence is the
    # fit itself plus a nonnegative mix of hinge functions and constants, projected).
    best = float(((f - y) ** 2).sum())
    for _ in range(200):
        c = np.abs(rng.normal(size=m)) * rng.random(m) ** 4
        knots = x[:-1]
        g = rng.normal() + np.maximum(0.0, x[:, None] - knots[None, :]) @ c[: m - 1]
        assert ((g - y) ** 2).sum() >= best - 1e-9 * (1 + best)
        # Also perturbations of the fit toward feasible directions.
        h = f + 1e-3 * (g - f)
        assert ((h - y) ** 2).sum() >= best - 1e-9 * (1 + best)


@pytest.mark.parametrize("seed", range(20))
def test_fit_is_exact_on_convex_input(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    m = int(rng.integers(1, 14))
    x = np.cumsum(rng.integers(1, 100, m)).astype(float)
    slopes = np.sort(np.abs(rng.normal(size=max(m - 1, 0))))
    slopes[rng.random(len(slopes)) < 0.3] = 0.0
    slopes = np.sort(slopes)
    y = np.concatenate([[rng.normal() * 5], rng.normal() * 5 + np.cumsum(slopes * np.diff(x))])
    y[1:] = y[0] + np.cumsum(slopes * np.diff(x))
    f = fit_monotone_convex(x.tolist(), y.tolist())
    np.testing.assert_allclose(f, y, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(y).max())))


def test_fit_of_decreasing_data_is_flat_mean() -> None:
    f = fit_monotone_convex([0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(f, [2.5] * 4, atol=1e-12)


def _table() -> CostTable:
    nodes = [0, 8, 32, 128, 512]
    noisy = [[10.0, 10.4, 10.1, 13.0, 30.0], [12.0, 12.1, 12.9, 16.0, 40.0]]
    return CostTable(
        nodes=nodes,
        contexts=[100, 1000],
        verify=[noisy],
        draft=[[2.0, 3.0]],
        meta={"device": "test", "model": "none", "dtype": "float32"},
    )


def test_interpolation_clamping_and_extrapolation() -> None:
    t = _table()
    fit = np.asarray(t.fitted()[0])
    row_lo = t.verify_costs(1024, ctx=0)  # clamped to ctx 100
    np.testing.assert_allclose(row_lo[[0, 8, 32, 128, 512]], fit[0], rtol=1e-12)
    row_mid = t.verify_costs(1024, ctx=550)  # halfway
    np.testing.assert_allclose(row_mid[[0, 512]], 0.5 * (fit[0] + fit[1])[[0, 4]], rtol=1e-12)
    slope = (fit[0][4] - fit[0][3]) / (512 - 128)
    assert row_lo[1024] == pytest.approx(fit[0][4] + slope * 512)
    assert row_lo[20] == pytest.approx(fit[0][1] + (fit[0][2] - fit[0][1]) * 12 / 24)
    assert t.draft_cost(5000) == 3.0 and t.draft_cost(550) == pytest.approx(2.5)
    for ctx in (0, 300, 5000):
        row = t.verify_costs(2000, ctx)
        assert _is_monotone_convex(list(range(2001)), row.tolist())
    assert t.verify_row(16, 100).dtype == torch.float32


def test_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = _table()
    p = tmp_path / "cost.json"
    t.save(p)
    d = json.loads(p.read_text())
    assert d["meta"]["device"] == "test" and d["unit"] == "ms"
    u = CostTable.load(p)
    assert np.array_equal(u.verify_costs(700, 400), t.verify_costs(700, 400))
    with pytest.raises(ValueError, match="format"):
        CostTable.from_dict({"format": "x"})
    with pytest.raises(ValueError, match="verify must be"):
        CostTable(nodes=[0, 1], contexts=[0], verify=[[[1.0]]], draft=[[0.0]])
    with pytest.raises(ValueError, match="strictly increasing"):
        CostTable(nodes=[1, 1], contexts=[0], verify=[[[1.0, 1.0]]], draft=[[0.0]])


def test_batch_dimension() -> None:
    t = CostTable(
        nodes=[0, 64],
        contexts=[0],
        batches=[1, 4],
        verify=[[[1.0, 2.0]], [[3.0, 8.0]]],
        draft=[[0.5], [1.0]],
    )
    assert t.verify_costs(64, 0, batch=4)[64] == pytest.approx(8.0)
    assert t.verify_costs(64, 0, batch=2)[64] == pytest.approx(2.0 + 6.0 / 3)
    assert t.draft_cost(0, batch=16) == 1.0


@pytest.mark.parametrize("seed", range(30))
def test_theta_is_unimodal_on_fitted_tables(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nodes = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    base = float(rng.uniform(1, 20))
    raw = [base + rng.uniform(0, 0.2) * n**0.5 + rng.uniform(0, 1e-4) * n**2 for n in nodes]
    raw = [r * (1 + 0.05 * rng.normal()) for r in raw]  # measurement noise: not convex
    t = CostTable(nodes=nodes, contexts=[0], verify=[[raw]], draft=[[float(rng.uniform(0, 5))]])
    # Nonincreasing δ: sorted path probabilities.
    delta = np.sort(rng.random(1024) ** rng.uniform(1, 30))[::-1]
    th = theta(np.log(delta).tolist(), t.verify_costs(1024, 0).tolist(), t.draft_cost(0))
    d = np.diff(th)
    # Up, then never up again (unimodal).
    first_down = int(np.argmax(d <= 0)) if (d <= 0).any() else len(d)
    assert (d[first_down:] <= 1e-12 * max(th)).all()


def test_default_table_is_conservative() -> None:
    t = default_cost_table()
    row = t.verify_costs(4096, 0)
    assert row[0] == pytest.approx(1.0) and _is_monotone_convex(list(range(4097)), row.tolist())
    assert t.verify_costs(64, 32768)[64] > t.verify_costs(64, 0)[64]


def _random_table(seed: int) -> tuple[CostTable, int]:
    """A random table (1..4 contexts, 1..3 batches, odd grids) and a batch size to query."""
    rng = np.random.default_rng(seed)
    nodes = sorted(rng.choice(np.arange(0, 300), size=int(rng.integers(1, 6)), replace=False))
    contexts = sorted(rng.choice(np.arange(1, 40000), size=int(rng.integers(1, 5)), replace=False))
    batches = sorted(rng.choice(np.arange(1, 9), size=int(rng.integers(1, 4)), replace=False))
    verify = rng.uniform(0.1, 30.0, size=(len(batches), len(contexts), len(nodes))).tolist()
    draft = rng.uniform(0.05, 3.0, size=(len(batches), len(contexts))).tolist()
    table = CostTable(
        nodes=[int(n) for n in nodes],
        contexts=[int(c) for c in contexts],
        batches=[int(b) for b in batches],
        verify=verify,
        draft=draft,
    )
    return table, int(rng.integers(1, 10))


@pytest.mark.parametrize("seed", range(25))
def test_device_costs_bit_identical_to_host(seed: int) -> None:
    # Graph-mode CaDDTree prices a round from device context lengths: the rows must be the host
    # rows bit for bit (below, on, between and above the profiled contexts).
    table, batch = _random_table(seed) if seed else (default_cost_table(), 1)
    grid = table.contexts
    ctxs = sorted(
        {0, 1, grid[0] - 1, grid[0], grid[0] + 1, grid[-1] - 1, grid[-1], grid[-1] + 7, 65536}
        | {c + d for c in grid for d in (-3, 0, 2)}
        | {(a + b) // 2 for a, b in zip(grid, grid[1:])}
    )
    ctxs = [c for c in ctxs if c >= 0]
    max_nodes = 1 + seed * 13
    dev = table.device_costs(max_nodes, batch)
    verify, draft = dev.at(torch.tensor(ctxs))
    assert verify.dtype == draft.dtype == torch.float32
    assert verify.shape == (len(ctxs), max_nodes + 1) and draft.shape == (len(ctxs),)
    for i, c in enumerate(ctxs):
        assert torch.equal(verify[i], table.verify_row(max_nodes, c, batch)), (seed, c)
        want = torch.tensor(table.draft_cost(c, batch), dtype=torch.float32)
        assert torch.equal(draft[i], want), (seed, c)
    # Negative lengths (never produced) clamp to 0 rather than indexing out of range.
    v0, d0 = dev.at(torch.tensor([-5]))
    assert torch.equal(v0[0], table.verify_row(max_nodes, 0, batch))
    assert float(d0[0]) == np.float32(table.draft_cost(0, batch))


def test_grid_rows_blend_matches_closed_form() -> None:
    # Between two profiled contexts the row is the weighted mean of the two grid rows.
    t = _table()
    rows = t.grid_rows(600)
    assert rows.shape == (1, 2, 601)
    np.testing.assert_allclose(t.verify_costs(600, 550), 0.5 * (rows[0, 0] + rows[0, 1]), rtol=0)
    assert t.grid_rows(600) is rows  # cached per max_nodes
