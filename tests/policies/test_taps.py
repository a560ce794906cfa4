"""TAPS selector: C++ taps_select vs the plain-Python reference (bit-identical, ties included),
the pool vs DDTree, the marginal scorer vs DDTree, the fallback q_cond, named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import random_logits
from tests.ops.test_ddtree_select import assert_same_tree
from tests.ops.tree_checks import assert_tree_invariants

from difftree_rt import ops
from difftree_rt.policies.taps import fallback_log_qc, marginal_log_qc, taps_pool
from difftree_rt.reference.taps import taps_select as ref_taps_select


def _candidates(seed: int, B: int, L: int, V: int, k: int, ties: bool = False):
    gen = torch.Generator().manual_seed(seed)
    x = random_logits(gen, B, L, V, ties=ties)
    token, logprob = ops.topk_logprobs(x, k)
    root = torch.randint(0, V, (B,), generator=gen)
    return token, logprob, root, gen


def _log_qc(pool, gen: torch.Generator, ties: bool) -> torch.Tensor:
    x = -torch.rand(pool.token.shape, generator=gen) * 3
    if ties:  # few distinct values (exact 0 included): many equal reaches
        x = -(torch.randint(0, 3, pool.token.shape, generator=gen).float() * 0.5)
    return x.float()


@pytest.mark.parametrize("seed", range(60))
def test_taps_select_matches_reference(seed: int) -> None:
    V = [5, 40, 300][seed % 3]
    B, L = 1 + seed % 3, 1 + seed % 7
    width, pool_size = [1, 3, 8, 40][seed % 4], [1, 6, 30, 90][(seed // 4) % 4]
    budget = [1, 5, 20, 100][(seed // 2) % 4]
    token, logprob, root, gen = _candidates(seed, B, L, V, min(width, V), seed % 5 == 0)
    pool = taps_pool(token, logprob, width, pool_size, root)
    log_qc = _log_qc(pool, gen, ties=seed % 2 == 0)
    args = (pool.token, pool.parent, pool.size, log_qc, budget)
    got = ops.taps_select(*args, max_depth=L)
    want = ref_taps_select(*args, max_depth=L)
    assert_same_tree(got, want)
    assert_tree_invariants(got)
    assert int(got.num_nodes.min()) >= 1
    assert torch.equal(got.num_nodes, torch.clamp(pool.size, max=budget + 1).int())
    # int32 pools give the same tree
    args32 = (pool.token.int(), pool.parent.int(), pool.size.int(), log_qc, budget)
    assert_same_tree(ops.taps_select(*args32, max_depth=L), got)


@pytest.mark.parametrize("seed", range(24))
def test_pool_with_wide_beam_is_the_ddtree_tree(seed: int) -> None:
    V, P = [5, 50, 300][seed % 3], [1, 7, 40, 120][seed % 4]
    B, L = 1 + seed % 2, 1 + seed % 9
    token, logprob, root, _ = _candidates(seed, B, L, V, min(P, V), seed % 3 == 0)
    pool = taps_pool(token, logprob, P, P, root)
    dd = ops.ddtree_select_from_candidates(token, logprob, P, root)
    assert torch.equal(pool.size, dd.num_nodes.long())
    for name in ("token", "parent", "depth", "score"):
        assert torch.equal(getattr(pool, name), getattr(dd, name).to(getattr(pool, name).dtype)), (
            name
        )


@pytest.mark.parametrize("seed", range(24))
def test_narrow_pool_is_prefix_closed_and_ordered(seed: int) -> None:
    V, width, P = [5, 50, 300][seed % 3], [1, 2, 4][seed % 3], [3, 17, 60][seed % 3]
    token, logprob, root, _ = _candidates(seed, 2, 1 + seed % 8, V, min(width, V), seed % 2 == 0)
    pool = taps_pool(token, logprob, width, P, root)
    for b in range(2):
        n = int(pool.size[b])
        assert n - 1 <= min(P, width * token.shape[1])
        par, sc, dep = pool.parent[b, 1:n], pool.score[b, 1:n], pool.depth[b, 1:n]
        assert bool((par < torch.arange(1, n)).all())
        assert bool((dep == pool.depth[b][par] + 1).all())
        assert bool((sc <= pool.score[b][par]).all())
        assert bool((sc[1:] <= sc[:-1]).all())  # best-first
        for d in range(1, token.shape[1] + 1):  # at most `width` nodes per depth
            assert int((dep == d).sum()) <= width


@pytest.mark.parametrize("seed", range(20))
def test_marginal_scorer_is_ddtree(seed: int) -> None:
    V, budget = [5, 50, 300][seed % 3], [1, 9, 40, 100][seed % 4]
    B, L = 1 + seed % 3, 1 + seed % 10
    width, pool_size = budget + seed % 3, budget + 5 * (seed % 2)
    token, logprob, root, _ = _candidates(seed, B, L, V, min(width, V), seed % 4 == 0)
    pool = taps_pool(token, logprob, width, pool_size, root)
    got = ops.taps_select(
        pool.token, pool.parent, pool.size, marginal_log_qc(pool, logprob), budget, max_depth=L
    )
    assert_same_tree(got, ops.ddtree_select_from_candidates(token, logprob, budget, root))


@pytest.mark.parametrize("seed", range(12))
def test_fallback_log_qc(seed: int) -> None:
    V, width, P = [5, 50, 300][seed % 3], [2, 8, 30][seed % 3], [10, 40, 100][seed % 3]
    token, logprob, root, _ = _candidates(seed, 2, 1 + seed % 6, V, min(width, V), seed % 2 == 0)
    pool = taps_pool(token, logprob, width, P, root)
    lq = fallback_log_qc(pool, logprob)
    assert lq.dtype == torch.float32
    for b in range(2):
        n = int(pool.size[b])
        assert bool((lq[b, 1:n] <= 0).all()) and bool(torch.isfinite(lq[b, 1:n]).all())
        # per parent: Σ q_cond <= 1 (the "other" mass is the rest), and q_cond >= q_d
        par = pool.parent[b, 1:n].numpy()
        tot = np.zeros(n)
        np.add.at(tot, par, np.exp(lq[b, 1:n].double().numpy()))
        assert (tot <= 1 + 1e-5).all()
        lp = logprob[b, pool.depth[b, 1:n] - 1, pool.rank[b, 1:n]]
        assert bool((lq[b, 1:n] >= lp - 1e-5).all())
    tree = ops.taps_select(pool.token, pool.parent, pool.size, lq, 16, max_depth=pool.max_depth)
    assert_tree_invariants(tree)


def test_taps_select_bad_arguments() -> None:
    tok = torch.tensor([[5, 1, 2, 3]])
    par = torch.tensor([[-1, 0, 0, 1]])
    n = torch.tensor([4])
    lq = torch.tensor([[0.0, -0.1, -0.5, -0.3]])
    ok = ops.taps_select(tok, par, n, lq, 2, max_depth=2)
    assert ok.token[0, :3].tolist() == [5, 1, 3]
    cases = [
        ((tok, par, n, lq.double(), 2), "log_qc"),
        ((tok, par, n, -lq, 2), "log_qc: expected finite log-probs <= 0"),
        ((tok, par, n, lq.clone().index_fill_(1, torch.tensor([2]), float("nan")), 2), "log_qc"),
        ((tok, torch.tensor([[0, 0, 0, 1]]), n, lq, 2), "pool_parent: expected -1"),
        ((tok, torch.tensor([[-1, 0, 2, 1]]), n, lq, 2), "pool_parent: expected 0 <= parent"),
        ((torch.tensor([[5, 1, 1, 3]]), par, n, lq, 2), "distinct tokens among siblings"),
        ((torch.tensor([[5, -1, 2, 3]]), par, n, lq, 2), "pool_token: expected token ids"),
        ((tok, par, torch.tensor([5]), lq, 2), "pool_size: expected values in [1, 4]"),
        ((tok, par, torch.tensor([0]), lq, 2), "pool_size"),
        ((tok[:, :3], par, n, lq, 2), "pool_token"),
        ((tok, par, n, lq, 0), "budget"),
        ((tok, par, n.float(), lq, 2), "pool_size"),
    ]
    for args, msg in cases:
        with pytest.raises((ValueError, TypeError), match=msg.replace("[", r"\[")):
            ops.taps_select(*args, max_depth=2)
    # a duplicate token under *different* parents is fine; rows past pool_size are ignored
    ops.taps_select(torch.tensor([[5, 1, 2, 1]]), par, n, lq, 3, max_depth=2)
    ops.taps_select(tok, torch.tensor([[-1, 0, 0, 7]]), torch.tensor([3]), lq, 3, max_depth=2)


@pytest.mark.parametrize("seed", range(20))
def test_selection_is_the_global_top_budget_by_reach(seed: int) -> None:
    # Reach never increases along a path, so the top-budget pool nodes by reach (no ties
    # here) are already prefix-closed: the selection is exactly them, no ancestor added.
    V, W, P, budget = 60, [2, 6, 20][seed % 3], [10, 40, 120][seed % 3], [3, 9, 30][seed % 3]
    token, logprob, root, gen = _candidates(seed, 1, 1 + seed % 7, V, W)
    pool = taps_pool(token, logprob, W, P, root)
    log_qc = _log_qc(pool, gen, ties=False)
    n = int(pool.size[0])
    reach = torch.zeros(n)
    for i in range(1, n):
        reach[i] = reach[pool.parent[0, i]] + log_qc[0, i]
    got = ops.taps_select(
        pool.token, pool.parent, pool.size, log_qc, budget, max_depth=pool.max_depth
    )
    m = int(got.num_nodes[0])
    want = torch.sort(reach[1:], descending=True).values[: m - 1]
    torch.testing.assert_close(got.score[0, 1:m], want, rtol=0, atol=1e-5)


# ---- the device-form pool and q_cond (torch ops) against the numpy reference -----------------


def _pool_case(seed: int):
    gen = torch.Generator().manual_seed(10_000 + seed)
    B, L = 1 + seed % 3, [1, 2, 5, 7, 15][seed % 5]
    V = [1, 2, 5, 40, 300][(seed // 5) % 5]
    width, P = [1, 2, 3, 8, 40, 100][seed % 6], [1, 6, 30, 90, 300][(seed // 6) % 5]
    x = random_logits(gen, B, L, V, ties=seed % 3 == 0, neg_inf=seed % 4 == 0)
    K = max(1, min(width, V)) if seed % 7 else max(1, min(V, width + 3))  # K > width too
    token, logprob = ops.topk_logprobs(x, K)
    root = None if seed % 11 == 0 else torch.randint(0, V, (B,), generator=gen)
    return token, logprob, width, P, root


@pytest.mark.parametrize("seed", range(150))
def test_device_form_pool_matches_numpy_reference(seed: int) -> None:
    from difftree_rt.reference import taps as ref

    token, logprob, width, P, root = _pool_case(seed)
    got = taps_pool(token, logprob, width, P, root)
    want = ref.taps_pool(token, logprob, width, P, root)
    for name in ("token", "parent", "depth", "rank", "size"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert torch.equal(got.score.view(torch.int32), want.score.view(torch.int32))
    assert got.max_depth == want.max_depth
    # Fixed shapes: every request has the same number of rows, known from the shapes alone.
    assert got.token.shape == (token.shape[0], P + 1)
    # marginal: exact; fallback: equal bits wherever the reference's lp - lse does not cancel
    # (|log q_cond| > 1e-6), ~1e-15 absolute where it does (the device form is accurate there).
    m_got, m_want = marginal_log_qc(got, logprob), ref.marginal_log_qc(want, logprob)
    assert torch.equal(m_got.view(torch.int32), m_want.view(torch.int32))
    f_got, f_want = fallback_log_qc(got, logprob), ref.fallback_log_qc(want, logprob)
    assert f_got.dtype == torch.float32 and f_got.shape == f_want.shape
    far = f_want.abs() > 1e-6
    assert torch.equal(f_got[far], f_want[far])
    assert float((f_got - f_want).abs().max()) <= 1e-12
    assert bool((f_got <= 0).all()) and not bool(torch.signbit(f_got[f_got == 0]).any())


def test_device_form_pool_builds_no_host_value() -> None:
    from difftree_rt.engine.runner import forbid_host_sync
    from difftree_rt.policies import PolicyInput, TapsPolicy

    token, logprob, root, _ = _candidates(5, 2, 15, 300, 40)
    with forbid_host_sync():
        pool = taps_pool(token, logprob, 40, 80, root)
        fallback_log_qc(pool, logprob)
        marginal_log_qc(pool, logprob)
    logits = random_logits(torch.Generator().manual_seed(1), 1, 15, 300)
    for scorer in (None, "marginal"):
        policy = TapsPolicy(budget=32, scorer=scorer)
        with forbid_host_sync():
            tree = policy.select(PolicyInput(draft_logits=logits, root_token=torch.tensor([3])))
        assert_tree_invariants(tree)
