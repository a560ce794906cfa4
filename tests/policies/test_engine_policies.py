"""caddtree and presto through the engine: lossless greedy (identical tokens to HF greedy),
lossless sampling (chi-square of the first tokens' joint), and policy behaviour end to end."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy_reference, random_pair, trained_pair
from sampling_check import assert_sampling_lossless
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.policies import make_policy
from difftree_rt.policies import CaDDTreePolicy, CostTable, PrestoPolicy


def _steep_table() -> CostTable:
    nodes = [0, 1, 2, 4, 8]
    return CostTable(nodes=nodes, contexts=[0], verify=[[[1.0 + 5 * n + n * n for n in nodes]]],
                     draft=[[0.0]])  # fmt: skip


def _policies(budget: int) -> list:
    return [
        make_policy("caddtree", budget),
        CaDDTreePolicy(budget, _steep_table()),
        make_policy("presto", budget),
        PrestoPolicy(budget, lam=1.0, order=2, alpha=0.3),
    ]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("budget", [1, 7, 64])
def test_greedy_lossless_random_pair(arch: str, budget: int) -> None:
    target, drafter = random_pair(arch)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128, (1, n), generator=gen) for n in (1, 9, 23)]
    refs = [greedy_reference(target, p, 24) for p in prompts]
    for policy in _policies(budget):
        dec = SpeculativeDecoder(target, drafter, policy)
        for prompt, ref in zip(prompts, refs):
            out = dec.generate(prompt, 24)
            assert_greedy_equal(target, out.sequences, ref)
            assert sum(out.stats.emitted_per_round) + 1 == 24


def test_greedy_lossless_trained_pair_and_behaviour() -> None:
    target, drafter = trained_pair()
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 32, (1, n), generator=gen) for n in (3, 9, 17)]
    refs = [greedy_reference(target, p, 48) for p in prompts]
    taus: dict[str, list[float]] = {}
    for name, policy in [
        ("ddtree", make_policy("ddtree", 64)),
        ("caddtree", CaDDTreePolicy(64)),
        ("caddtree-steep", CaDDTreePolicy(64, _steep_table())),
        ("presto", PrestoPolicy(64)),
    ]:
        dec = SpeculativeDecoder(target, drafter, policy)
        for prompt, ref in zip(prompts, refs):
            out = dec.generate(prompt, 48)
            assert_greedy_equal(target, out.sequences, ref)
            taus.setdefault(name, []).append(out.stats.tau)
        if name == "caddtree-steep":
            assert max(policy.sizes) <= 1  # a chain of at most one node
        if name == "caddtree":
            assert 1 <= min(policy.sizes) and max(policy.sizes) <= 64
    mean = {k: sum(v) / len(v) for k, v in taus.items()}
    assert mean["presto"] > 2.0 and mean["caddtree"] > 2.0, mean


@pytest.mark.parametrize(
    "policy_name,budget,temperature,top_p", [("caddtree", 48, 1.0, None), ("presto", 48, 0.7, 0.9)]
)
def test_sampling_distribution_equals_target(policy_name, budget, temperature, top_p) -> None:
    def make(_: torch.nn.Module) -> CaDDTreePolicy | PrestoPolicy:
        if policy_name == "caddtree":
            table = CostTable(nodes=[0, 64], contexts=[0], verify=[[[1.0, 1.2]]], draft=[[0.1]])
            return CaDDTreePolicy(budget, table)
        return PrestoPolicy(budget, lam=1.0)

    assert_sampling_lossless(make, temperature=temperature, top_p=top_p)


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_presto_batch_select_equals_solo_selects(budget: int) -> None:
    # A batch's rows (-1-padded ragged streams, context_lengths given) get exactly the trees of
    # B = 1 calls on their own streams, round after round (each request keeps its own prior).
    from difftree_rt.engine.policies import PolicyInput

    gen = torch.Generator().manual_seed(budget)
    B, L, V = 3, 6, 40
    streams = [torch.randint(0, 6, (n,), generator=gen).tolist() for n in (2, 30, 11)]
    batch = PrestoPolicy(budget, lam=1.0)
    solos = [PrestoPolicy(budget, lam=1.0) for _ in range(B)]
    for round_idx in range(1, 4):
        logits = torch.randn(B, L, V, generator=gen)
        root = torch.tensor([s[-1] for s in streams])
        width = max(len(s) for s in streams) + 2
        ctx = torch.full((B, width), -1, dtype=torch.long)
        for b, s in enumerate(streams):
            ctx[b, : len(s)] = torch.tensor(s)
        got = batch.select(
            PolicyInput(logits, root, round_idx, ctx, context_lengths=[len(s) - 1 for s in streams])
        )
        for b, s in enumerate(streams):
            want = solos[b].select(
                PolicyInput(logits[b : b + 1], root[b : b + 1], round_idx, torch.tensor([s]))
            )
            for g, w in zip(got.arrays(), want.arrays()):
                assert torch.equal(g[b : b + 1], w), (budget, round_idx, b)
            s.extend(torch.randint(0, 6, (1 + b,), generator=gen).tolist())
    assert [p.stream for p in batch.batch_priors] == [p.prior.stream for p in solos]
