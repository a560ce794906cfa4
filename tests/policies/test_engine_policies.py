"""caddtree and presto through the engine: lossless greedy (identical tokens to HF greedy),
lossless sampling (chi-square of the first tokens' joint), and policy behaviour end to end."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy_reference, random_pair, trained_pair
from sampling_check import assert_sampling_lossless
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.policies import CaDDTreePolicy, CostTable, PrestoPolicy, make_policy


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
def test_presto_batch_select_equals_solo_selects_and_reference(budget: int) -> None:
    # A batch's streams (ragged, extended by different counts each round) get exactly the trees
    # of B = 1 policies on their own streams, and of the reference over exact n-gram counts.
    from difftree_rt import ops
    from difftree_rt.policies import PolicyInput
    from difftree_rt.reference import policies as pref

    gen = torch.Generator().manual_seed(budget)
    B, L, V = 3, 6, 40
    streams = [torch.randint(0, 6, (n,), generator=gen).tolist() for n in (2, 30, 11)]
    policy = PrestoPolicy(budget, lam=1.0)
    batch = policy.new_stream(B, 64, "cpu")
    width = max(len(s) for s in streams)
    padded = torch.zeros(B, width, dtype=torch.long)
    for b, s in enumerate(streams):
        padded[b, : len(s)] = torch.tensor(s)
    policy.start_stream(batch, padded, torch.tensor([len(s) for s in streams]))
    solos = []
    for s in streams:
        st = policy.new_stream(1, 64, "cpu")
        policy.start_stream(st, torch.tensor([s]), torch.tensor([len(s)]))
        solos.append(st)
    for round_idx in range(1, 4):
        logits = torch.randn(B, L, V, generator=gen)
        root = torch.tensor([s[-1] for s in streams])
        got = policy.select(PolicyInput(logits, root, round_idx, stream=batch))
        k = min(budget, V)
        token, logprob = ops.topk_logprobs(logits, k)
        for b, s in enumerate(streams):
            want = policy.select(
                PolicyInput(logits[b : b + 1], root[b : b + 1], round_idx, stream=solos[b])
            )
            ctx = torch.tensor([[-1, -1, *s][-2:]])
            ref = pref.presto_select_from_candidates(
                token[b : b + 1], logprob[b : b + 1], budget, ctx, [pref.NGramCounts(s, 3)],
                vocab=V, lam=1.0, root_token=root[b : b + 1],
            )  # fmt: skip
            for g, w, r in zip(got.arrays(), want.arrays(), ref.arrays()):
                assert torch.equal(g[b : b + 1], w), (budget, round_idx, b)
                assert torch.equal(w, r.to(w.dtype)), (budget, round_idx, b)
        new = [torch.randint(0, 6, (1 + b,), generator=gen).tolist() for b in range(B)]
        ext = torch.zeros(B, 3, dtype=torch.long)
        for b, t in enumerate(new):
            ext[b, : len(t)] = torch.tensor(t)
            policy.extend_stream(solos[b], ext[b : b + 1], torch.tensor([len(t)]))
            streams[b].extend(t)
        policy.extend_stream(batch, ext, torch.tensor([len(t) for t in new]))


def test_presto_select_needs_its_stream() -> None:
    from difftree_rt.policies import PolicyInput

    policy = PrestoPolicy(8)
    logits = torch.randn(2, 4, 30)
    with pytest.raises(ValueError, match=r"PolicyInput\.stream"):
        policy.select(PolicyInput(logits, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="2 tables"):
        policy.select(
            PolicyInput(logits[:1], torch.zeros(1, dtype=torch.long),
                        stream=policy.new_stream(2, 16, "cpu"))
        )  # fmt: skip
