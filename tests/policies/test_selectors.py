"""caddtree_select and presto_select: C++ against the plain-Python references bit for bit,
invariants, and the defining properties (chain under steep costs, DDTree under flat costs or
λ = 0, the prior promoting the branch the context repeats)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import random_logits
from tests.ops.test_ddtree_select import assert_same_tree
from tests.ops.tree_checks import assert_tree_invariants

from difftree_rt import ops
from difftree_rt import reference as ref
from difftree_rt.policies import NGramPrior
from difftree_rt.reference import policies as pref


def _candidates(seed: int, B: int, L: int, V: int, k: int, ties: bool = False):
    gen = torch.Generator().manual_seed(seed)
    x = random_logits(gen, B, L, V, ties=ties)
    token, logprob = ops.topk_logprobs(x, k)
    root = torch.randint(0, V, (B,), generator=gen)
    return token, logprob, root, gen


# ---- caddtree --------------------------------------------------------------------------------


def _costs(gen: torch.Generator, B: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.arange(budget + 1, dtype=torch.float64)
    rows = []
    for _ in range(B):
        a, b, c = (float(torch.rand((), generator=gen)) for _ in range(3))
        rows.append(1 + a * 0.05 * n + b * 1e-3 * n**2 + c * 0.01 * n.sqrt())
    return torch.stack(rows).float(), torch.rand(B, generator=gen).float()


@pytest.mark.parametrize("seed", range(120))
def test_caddtree_matches_reference(seed: int) -> None:
    B, L = 1 + seed % 3, 1 + seed % 9
    V = [4, 20, 100][seed % 3]
    budget = [1, 7, 33, 120][seed % 4]
    token, logprob, root, gen = _candidates(seed, B, L, V, min(budget, V), ties=seed % 5 == 0)
    verify, draft = _costs(gen, B, budget)
    got = ops.caddtree_select_from_candidates(token, logprob, budget, verify, draft, root)
    want = pref.caddtree_select_from_candidates(token, logprob, budget, verify, draft, root)
    assert_same_tree(got, want)
    assert_tree_invariants(got)
    # The kept nodes are DDTree's best-first prefix.
    full = ops.ddtree_select_from_candidates(token, logprob, budget, root)
    for b in range(B):
        n = int(got.num_nodes[b])
        assert torch.equal(got.token[b, :n], full.token[b, :n])
        assert torch.equal(got.parent[b, :n], full.parent[b, :n])


def test_caddtree_steep_cost_gives_a_chain_or_less() -> None:
    for seed in range(20):
        token, logprob, root, _ = _candidates(seed, 2, 8, 50, 50)
        budget = 50
        n = torch.arange(budget + 1, dtype=torch.float32)
        verify = (1 + 10.0 * n + n**2)[None].expand(2, -1).contiguous()
        tree = ops.caddtree_select_from_candidates(
            token, logprob, budget, verify, torch.zeros(2), root
        )
        assert_tree_invariants(tree)
        assert bool(tree.is_chain().all())
        assert int(tree.num_nodes.max()) <= 2


def test_caddtree_flat_cost_equals_ddtree_at_max_budget() -> None:
    for seed in range(20):
        budget = [5, 64, 300][seed % 3]
        token, logprob, root, _ = _candidates(seed, 2, 10, 64, min(budget, 64))
        verify = torch.ones(2, budget + 1)
        got = ops.caddtree_select_from_candidates(
            token, logprob, budget, verify, torch.full((2,), 0.3), root
        )
        assert_same_tree(got, ops.ddtree_select_from_candidates(token, logprob, budget, root))


def test_caddtree_bad_costs() -> None:
    token, logprob, _, _ = _candidates(0, 1, 3, 10, 4)
    with pytest.raises(ValueError, match="verify_cost"):
        ops.caddtree_select_from_candidates(token, logprob, 4, torch.ones(1, 4), torch.zeros(1))
    bad = torch.ones(1, 5)
    bad[0, 2] = float("nan")
    with pytest.raises(ValueError, match="verify_cost: expected finite"):
        ops.caddtree_select_from_candidates(token, logprob, 4, bad, torch.zeros(1))
    with pytest.raises(ValueError, match="draft_cost"):
        ops.caddtree_select_from_candidates(token, logprob, 4, torch.ones(1, 5), -torch.ones(1))
    with pytest.raises(ValueError, match="draft_cost \\+ verify_cost > 0"):
        ops.caddtree_select_from_candidates(token, logprob, 4, torch.zeros(1, 5), torch.zeros(1))


# ---- n-gram table ----------------------------------------------------------------------------


def test_ngram_table_counts_match_dictionary_counts() -> None:
    gen = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 12, (500,), generator=gen).tolist()
    prior = NGramPrior(order=3, capacity=16)  # forces several grow-and-rebuild steps
    for i in range(0, 500, 37):
        prior.sync(stream[: i + 37])
    assert prior.stream == stream
    counts = pref.NGramCounts(stream, 3)
    for ctx_len in (0, 1, 2):
        for i in range(ctx_len, 60):
            hist = [-1] * (2 - ctx_len) + stream[i - ctx_len : i]
            for t in range(12):
                p = counts.prob(hist, t, 0.5, 12)
                assert 0 < p < 1
    # Every stored key is counted once per occurrence: totals agree.
    assert int(prior.counts.sum()) == 2 * sum(counts.full.values())
    assert prior.used == len(counts.full) + len(counts.ctx)
    prior.sync([1, 2, 3])  # not an extension: a new request
    assert prior.stream == [1, 2, 3] and prior.context().tolist() == [2, 3]


# ---- presto ----------------------------------------------------------------------------------


def _prior_case(seed: int, V: int, order: int, T: int):
    gen = torch.Generator().manual_seed(1000 + seed)
    # Repetitive streams (a few motifs) so higher-order contexts are seen.
    motifs = [torch.randint(0, V, (int(torch.randint(2, 6, (), generator=gen)),), generator=gen)
              for _ in range(3)]  # fmt: skip
    stream: list[int] = []
    while len(stream) < T:
        stream += motifs[int(torch.randint(0, 3, (), generator=gen))].tolist()
    stream = stream[:T]
    prior = NGramPrior(order=order, capacity=64)
    prior.sync(stream)
    return prior, pref.NGramCounts(stream, order)


@pytest.mark.parametrize("seed", range(150))
def test_presto_matches_reference(seed: int) -> None:
    B, L = 1, 1 + seed % 7
    V = [3, 10, 40][seed % 3]
    budget = [1, 6, 30, 90][seed % 4]
    order = 1 + seed % 4
    lam = [0.0, 0.2, 1.0, 3.0][(seed // 4) % 4]
    alpha = [0.1, 1.0, 5.0][seed % 3]
    T = [0, 1, 40][(seed // 3) % 3] if seed % 5 else 0
    k = min(budget, V)
    token, logprob, _, _ = _candidates(seed, B, L, V, k, ties=seed % 6 == 0)
    prior, counts = _prior_case(seed, V, order, T)
    ctx = prior.context()[None]
    root = torch.tensor([prior.stream[-1] if prior.stream else 0])
    got = ops.presto_select_from_candidates(
        token, logprob, budget, ctx, prior.keys, prior.counts,
        order=order, vocab=V, lam=lam, alpha=alpha, root_token=root,
    )  # fmt: skip
    want = pref.presto_select_from_candidates(
        token, logprob, budget, ctx, [counts], vocab=V, lam=lam, alpha=alpha, root_token=root
    )
    assert_same_tree(got, want)
    assert_tree_invariants(got)
    assert bool((got.score[:, 1:][got.score[:, 1:] > -1e30] <= 0).all())


@pytest.mark.parametrize("seed", range(40))
def test_presto_lambda_zero_is_ddtree(seed: int) -> None:
    V, budget = [5, 50, 300][seed % 3], [1, 16, 100, 400][seed % 4]
    B = 1 + seed % 3
    token, logprob, root, _ = _candidates(seed, B, 1 + seed % 12, V, min(budget, V), seed % 4 == 0)
    prior, _ = _prior_case(seed, V, 3, 50)
    got = ops.presto_select_from_candidates(
        token, logprob, budget, prior.context()[None].expand(B, -1).contiguous(),
        prior.keys, prior.counts, order=3, vocab=V, lam=0.0, root_token=root,
    )  # fmt: skip
    assert_same_tree(got, ops.ddtree_select_from_candidates(token, logprob, budget, root))
    assert_same_tree(got, ref.ddtree_select_from_candidates(token, logprob, budget, root))


def test_presto_prior_promotes_the_repeated_branch() -> None:
    # The context repeats "5 7 9 11" many times; the drafter slightly prefers 8 over 9 after
    # "5 7". DDTree at budget 2 takes the drafter's chain; PRESTO follows the repetition.
    V = 16
    stream = [5, 7, 9, 11, 3] * 6 + [5, 7]
    prior = NGramPrior(order=3)
    prior.sync(stream)
    lp = torch.full((1, 2, 4), -6.0)
    tok = torch.tensor([[[8, 9, 1, 2], [11, 12, 13, 14]]], dtype=torch.int32)
    lp[0, 0, :2] = torch.tensor([-0.6, -0.8])  # 8 slightly ahead of 9
    lp[0, 1, 0] = -0.2
    lp = torch.log_softmax(lp, -1)  # proper distributions (sorted, distinct)
    root = torch.tensor([7])
    dd = ops.ddtree_select_from_candidates(tok, lp, 2, root)
    pr = ops.presto_select_from_candidates(
        tok, lp, 2, prior.context()[None], prior.keys, prior.counts,
        order=3, vocab=V, lam=0.5, root_token=root,
    )  # fmt: skip
    assert dd.token[0, 1].item() == 8
    assert pr.token[0].tolist() == [7, 9, 11]  # the branch the context predicts, then its child


def test_presto_bad_arguments() -> None:
    token, logprob, _, _ = _candidates(0, 1, 3, 10, 4)
    prior = NGramPrior(order=3)
    kw = dict(order=3, vocab=10)
    with pytest.raises(ValueError, match="context"):
        ops.presto_select_from_candidates(
            token, logprob, 4, torch.zeros(1, 1, dtype=torch.int64), prior.keys, prior.counts, **kw
        )
    with pytest.raises(ValueError, match="power-of-two"):
        ops.presto_select_from_candidates(
            token, logprob, 4, prior.context()[None], torch.zeros(3, dtype=torch.int64),
            torch.zeros(3, dtype=torch.int32), **kw,
        )  # fmt: skip
    with pytest.raises(ValueError, match="alpha"):
        ops.presto_select_from_candidates(
            token, logprob, 4, prior.context()[None], prior.keys, prior.counts, alpha=0.0, **kw
        )
    with pytest.raises(ValueError, match="full"):
        ops.ngram_update(
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(2, dtype=torch.int32),
            torch.arange(5),
            0,
            3,
        )


@pytest.mark.parametrize("seed", range(30))
def test_caddtree_cut_is_the_global_theta_optimum_on_fitted_tables(seed: int) -> None:
    import numpy as np

    from difftree_rt.policies import CostTable
    from difftree_rt.policies.cost import theta

    rng = np.random.default_rng(seed)
    nodes = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    raw = [10 + rng.uniform(0, 0.5) * n**0.7 + rng.uniform(0, 1e-3) * n**2 for n in nodes]
    raw = [r * (1 + 0.03 * rng.normal()) for r in raw]
    table = CostTable(nodes=nodes, contexts=[0], verify=[[raw]], draft=[[float(rng.uniform(0, 3))]])
    budget = 200
    token, logprob, root, _ = _candidates(seed, 1, 8, 60, 60)
    tree = ops.caddtree_select_from_candidates(
        token, logprob, budget, table.verify_row(budget, 0)[None],
        torch.tensor([table.draft_cost(0)], dtype=torch.float32), root,
    )  # fmt: skip
    full = ops.ddtree_select_from_candidates(token, logprob, budget, root)
    th = theta(
        full.score[0, 1:].tolist(), table.verify_row(budget, 0).double().tolist(),
        float(torch.tensor(table.draft_cost(0), dtype=torch.float32)),
    )  # fmt: skip
    assert int(tree.num_nodes[0]) - 1 == int(np.argmax(th))
