"""Graph mode for the policies beyond chain / DDTree: caddtree (cost rows priced on the device
from the committed length), taps (built-in reach estimates), d2sd (both drafting passes in
the draft graph, own or VP second drafter) and presto (n-gram tables on the device, extended in
the verify graph). On CPU the runner's round functions run eagerly (the
code a CUDA graph captures): graph == eager (tokens and accepted lengths; greedy, sampled, stop
tokens, batches), greedy == HF, no host read inside a round.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, random_pair, trained_pair
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.runner import GraphRunner, forbid_host_sync
from difftree_rt.policies import TapsPolicy


def _runner(dec: SpeculativeDecoder) -> GraphRunner:
    runner: GraphRunner = dec._runner()
    return runner


def _steep_table() -> Any:
    """Costs that grow fast with the context: the best cut shrinks as a request goes on."""
    from difftree_rt.policies import CostTable

    return CostTable(
        nodes=[0, 8, 64],
        contexts=[4, 24, 60],
        verify=[[[1.0, 1.02, 1.2], [1.0, 1.6, 9.0], [1.0, 4.0, 40.0]]],
        draft=[[0.2, 0.3, 0.5]],
    )


def _assert_graph_equals_eager(
    target: torch.nn.Module,
    graph: SpeculativeDecoder,
    eager: SpeculativeDecoder,
    gen: torch.Generator,
    prompt_lens: tuple[int, ...],
    new: int,
    kws: tuple[dict[str, Any], ...],
) -> list[Any]:
    """Per random prompt (drawn from ``gen``, lengths ``prompt_lens``) and per generate
    keywords: graph mode == eager in tokens and accepted lengths, and the plain (greedy) run ==
    HF greedy. Returns the graph-mode outputs."""
    outs = []
    for n in prompt_lens:
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        for kw in kws:
            got = graph.generate(prompt, new, **kw)
            want = eager.generate(prompt, new, **kw)
            assert torch.equal(got.sequences, want.sequences), kw
            assert got.stats.accepted_lengths == want.stats.accepted_lengths, kw
            if not kw:
                assert_greedy_equal(target, got.sequences, greedy_reference(target, prompt, new))
            outs.append(got)
    return outs


def test_caddtree_graph_mode_identical_to_eager() -> None:
    from difftree_rt.policies import CaDDTreePolicy

    target, drafter = trained_pair()
    table = _steep_table()
    eager_policy = CaDDTreePolicy(48, table)
    eager = SpeculativeDecoder(target, drafter, eager_policy)
    graph = SpeculativeDecoder(target, drafter, CaDDTreePolicy(48, table), cuda_graphs=True)
    rounds: list[int] = []
    _runner(graph).on_round = rounds.append
    _runner(graph).round_context = forbid_host_sync
    kws = (dict(), dict(temperature=0.8, seed=4), dict(stop_token_ids=[5]))
    gen = torch.Generator().manual_seed(7)
    _assert_graph_equals_eager(target, graph, eager, gen, (3, 21), 44, kws)
    assert rounds, "caddtree did not run in graph mode"
    # The cut really moved with the context (else this would only test ddtree again).
    assert len(set(eager_policy.sizes)) >= 3, eager_policy.sizes


@pytest.mark.parametrize("scorer", [None, "marginal"])
def test_taps_graph_mode_identical_to_eager(scorer: str | None) -> None:
    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, TapsPolicy(24, scorer=scorer))
    graph = SpeculativeDecoder(target, drafter, TapsPolicy(24, scorer=scorer), cuda_graphs=True)
    rounds: list[int] = []
    _runner(graph).on_round = rounds.append
    _runner(graph).round_context = forbid_host_sync
    kws = (dict(), dict(temperature=0.9, top_p=0.9, seed=2), dict(stop_token_ids=[3]))
    gen = torch.Generator().manual_seed(12)
    outs = _assert_graph_equals_eager(target, graph, eager, gen, (4, 19), 40, kws)
    max_acc = max(a for out in outs for a in out.stats.accepted_lengths)
    assert rounds and max_acc >= 3
    prompts = [torch.randint(0, 32, (n,), generator=gen) for n in (7, 2, 15)]
    got, want = graph.generate(prompts, 30), eager.generate(prompts, 30)
    assert torch.equal(got.sequences, want.sequences)


def _d2sd_policies(target: torch.nn.Module) -> list[Any]:
    """D²SD with its own drafter, and with VP drafters of other block sizes (6, 12)."""
    from engine_helpers import make_drafter

    from difftree_rt.policies import D2SDPolicy

    return [
        lambda: D2SDPolicy(32, k=3),
        lambda: D2SDPolicy(32, k=3, vp_drafter=make_drafter(target, block_size=6, seed=11)),
        lambda: D2SDPolicy(48, k=2, vp_drafter=make_drafter(target, block_size=12, seed=12)),
    ]


def test_d2sd_graph_mode_identical_to_eager() -> None:
    target, drafter = random_pair("qwen3")
    gen = torch.Generator().manual_seed(13)
    prompts = [torch.randint(0, 128, (1, n), generator=gen) for n in (2, 17)]
    for make in _d2sd_policies(target):
        policy = make()
        eager = SpeculativeDecoder(target, drafter, policy)
        graph = SpeculativeDecoder(target, drafter, policy, cuda_graphs=True)
        rounds: list[int] = []
        runner = _runner(graph)
        runner.on_round = rounds.append
        runner.round_context = forbid_host_sync
        for prompt in prompts:
            for kw in (dict(), dict(temperature=0.9, seed=6), dict(stop_token_ids=[9])):
                got = graph.generate(prompt, 30, **kw)
                want = eager.generate(prompt, 30, **kw)
                assert torch.equal(got.sequences, want.sequences), (policy, kw)
                assert got.stats.accepted_lengths == want.stats.accepted_lengths, (policy, kw)
                if not kw:
                    ref = greedy_reference(target, prompt, 30)
                    assert_greedy_equal(target, got.sequences, ref)
        assert rounds, "d2sd did not run in graph mode"
        assert (runner._vcache is None) == (policy.vp_drafter is None)
        batch = [torch.randint(0, 128, (n,), generator=gen) for n in (9, 3, 21)]
        got, want = graph.generate(batch, 24), eager.generate(batch, 24)
        assert torch.equal(got.sequences, want.sequences), policy
        for g, w in zip(got.request_stats, want.request_stats, strict=True):
            assert g.accepted_lengths == w.accepted_lengths


def test_d2sd_graph_mode_trained_pair_deep_paths() -> None:
    # Real acceptance through the joint tree (trunk and branches) in graph mode.
    from difftree_rt.policies import D2SDPolicy

    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, D2SDPolicy(48, k=4))
    graph = SpeculativeDecoder(target, drafter, D2SDPolicy(48, k=4), cuda_graphs=True)
    gen = torch.Generator().manual_seed(14)
    max_acc = 0
    for n in (5, 13):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        got, want = graph.generate(prompt, 48), eager.generate(prompt, 48)
        assert torch.equal(got.sequences, want.sequences)
        assert got.stats.accepted_lengths == want.stats.accepted_lengths
        assert_greedy_equal(target, got.sequences, greedy_reference(target, prompt, 48))
        max_acc = max(max_acc, *got.stats.accepted_lengths)
    assert max_acc >= 4


def test_caddtree_batch_graph_mode_identical_to_eager() -> None:
    from difftree_rt.policies import CaDDTreePolicy

    target, drafter = trained_pair()
    table = _steep_table()
    eager = SpeculativeDecoder(target, drafter, CaDDTreePolicy(32, table))
    graph = SpeculativeDecoder(target, drafter, CaDDTreePolicy(32, table), cuda_graphs=True)
    gen = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 32, (n,), generator=gen) for n in (2, 30, 11)]
    got = graph.generate(prompts, 36)
    want = eager.generate(prompts, 36)
    assert torch.equal(got.sequences, want.sequences)
    for g, w in zip(got.request_stats, want.request_stats, strict=True):
        assert g.accepted_lengths == w.accepted_lengths


@pytest.mark.parametrize("lam,order", [(1.0, 3), (0.3, 2)])
def test_presto_graph_mode_identical_to_eager(lam: float, order: int) -> None:
    from difftree_rt.policies import PrestoPolicy

    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, PrestoPolicy(24, lam=lam, order=order))
    graph_policy = PrestoPolicy(24, lam=lam, order=order)
    graph = SpeculativeDecoder(target, drafter, graph_policy, cuda_graphs=True)
    runner = _runner(graph)
    rounds: list[int] = []
    runner.on_round = rounds.append
    runner.round_context = forbid_host_sync
    kws = (dict(), dict(temperature=0.9, seed=6), dict(stop_token_ids=[4]))
    gen = torch.Generator().manual_seed(21)
    outs = _assert_graph_equals_eager(target, graph, eager, gen, (2, 26), 40, kws)
    assert rounds, "presto did not run in graph mode"
    # The runner's tables hold the last request's stream (prompt, generated tokens) exactly.
    stream = runner._pstream
    assert stream is not None and int(stream.overflow.sum()) == 0
    toks = outs[-1].sequences[0].tolist()
    assert stream.history[0].tolist() == toks[len(toks) - (order - 1) :]


def test_presto_batch_graph_mode_identical_to_eager() -> None:
    from difftree_rt.policies import PrestoPolicy

    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, PrestoPolicy(16, lam=1.0))
    graph = SpeculativeDecoder(target, drafter, PrestoPolicy(16, lam=1.0), cuda_graphs=True)
    _runner(graph).round_context = forbid_host_sync
    gen = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, 32, (n,), generator=gen) for n in (2, 30, 11)]
    outs = []
    for kw in (dict(), dict(temperature=0.8, seed=[1, 2, 3])):
        got = graph.generate(prompts, 36, **kw)
        outs.append(got)
        want = eager.generate(prompts, 36, **kw)
        assert torch.equal(got.sequences, want.sequences), kw
        for g, w in zip(got.request_stats, want.request_stats, strict=True):
            assert g.accepted_lengths == w.accepted_lengths
    # Solo and batch calls keep their own tables (one per batch bucket) at fixed addresses.
    solo = graph.generate(prompts[1][None], 36)
    assert torch.equal(solo.sequences[0], outs[0].sequences[1])
    again = graph.generate(prompts, 36)
    assert torch.equal(again.sequences, outs[0].sequences)


def _moderate_table() -> Any:
    """Verify costs that grow with the tree: cuts of ~5-35 nodes on the trained pair."""
    from difftree_rt.policies import CostTable

    return CostTable(
        nodes=[0, 8, 64, 256], contexts=[0], verify=[[[1.0, 1.05, 1.6, 4.0]]], draft=[[0.2]]
    )


def test_caddtree_tree_size_buckets_follow_the_cut() -> None:
    # Graph mode verifies each round in a tree-size bucket above the recent cuts (known one
    # round late) instead of the full capacity; with the default headroom no cut reaches its
    # bucket here, so the rounds are exactly the eager ones.
    from difftree_rt.policies import CaDDTreePolicy

    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, CaDDTreePolicy(256, _moderate_table()))
    graph = SpeculativeDecoder(
        target, drafter, CaDDTreePolicy(256, _moderate_table()), cuda_graphs=True
    )
    runner = _runner(graph)
    runner.round_context = forbid_host_sync
    assert runner.buckets == [8, 15, 29, 57, 113, 257]  # L = 7 on this pair
    gen = torch.Generator().manual_seed(3)
    kws = (dict(), dict(temperature=0.8, seed=2))
    _assert_graph_equals_eager(target, graph, eager, gen, (4, 20), 60, kws)
    assert runner.filled_rounds == 0
    used = [nb for _, nb in runner.bucket_log]
    assert len(set(used)) >= 2 and min(used) < runner.capacity, used
    # Every round's tree fitted its bucket: the eager cuts never exceeded the bucket's cap.
    assert max(eager.policy.sizes) < 113


def test_caddtree_capped_rounds_stay_lossless() -> None:
    # Starting in the smallest bucket, the first rounds' cuts stop at its cap (7 nodes): the
    # trees are smaller than eager's, the output is still the target's own.
    from difftree_rt.policies import CaDDTreePolicy

    target, drafter = trained_pair()
    graph = SpeculativeDecoder(
        target, drafter, CaDDTreePolicy(64, _moderate_table()), cuda_graphs=True
    )
    runner = _runner(graph)
    runner.start_bucket = 0
    gen = torch.Generator().manual_seed(5)
    for n in (3, 17):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        out = graph.generate(prompt, 50)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 50))
    assert runner.filled_rounds >= 1
    assert [nb for _, nb in runner.bucket_log][:2] == [8, 8]


def test_caddtree_capped_rounds_sample_the_target_distribution() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "policies"))
    from sampling_check import assert_sampling_lossless

    from difftree_rt.policies import CaDDTreePolicy

    def start_small(dec: SpeculativeDecoder) -> None:
        _runner(dec).start_bucket = 0

    assert_sampling_lossless(
        lambda _: CaDDTreePolicy(48, _moderate_table()),
        temperature=1.0,
        cuda_graphs=True,
        setup=start_small,
        num=1200,
        min_accepted=1,
    )
