"""Graph mode for batches (B > 1): the batch bucket runs the same static-buffer rounds.

On CPU the runner's round functions run eagerly (``cuda_graphs=True`` on a CPU target), the code
a CUDA graph captures. Checked: every request's greedy tokens equal its solo run, the eager batch
path and HF greedy (fp32); per-request accepted lengths equal the eager batch's; sampled batches
equal the eager batch for the same per-request seeds; requests that end early (stop token,
first-token stop, ``max_new_tokens`` mid-round) leave the others unchanged; no host read inside
a round; solo and batched calls keep separate, fixed buffers. ``cuda`` tests capture and replay.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, random_pair, trained_pair
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.runner import GraphRunner, forbid_host_sync

PROMPT_LENS = (1, 23, 6, 14)
NEW = 20


def _prompts(vocab: int, lens: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen) for n in lens]


def _new_tokens(out: Any, b: int) -> torch.Tensor:
    t = out.sequences.shape[1] - int(out.new_lengths.max())
    return out.sequences[b, t : t + int(out.new_lengths[b])]


def _runner(dec: SpeculativeDecoder) -> GraphRunner:
    runner: GraphRunner = dec._runner()
    return runner


def _assert_same_batch(got: Any, want: Any) -> None:
    """Two batch outputs are identical request by request (tokens, lengths, accepted paths)."""
    assert torch.equal(got.sequences, want.sequences)
    assert got.new_lengths.tolist() == want.new_lengths.tolist()
    for g, w in zip(got.request_stats, want.request_stats, strict=True):
        assert g.accepted_lengths == w.accepted_lengths
        assert g.emitted_per_round == w.emitted_per_round
        assert g.new_tokens == w.new_tokens and g.stopped == w.stopped


@pytest.mark.parametrize("policy", ["chain", "ddtree"])
def test_batch_graph_greedy_equals_eager_solo_and_hf(policy: str) -> None:
    target, drafter = random_pair("qwen3")
    prompts = _prompts(128, PROMPT_LENS, seed=11)
    refs = [greedy_reference(target, p[None], NEW)[0, p.numel() :] for p in prompts]
    for budget in (1, 7, 64):
        eager = SpeculativeDecoder(target, drafter, policy, budget=budget)
        graph = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=True)
        rounds: list[int] = []
        _runner(graph).on_round = rounds.append
        got = graph.generate(prompts, NEW)
        assert rounds, "the batch did not run in graph mode"
        want = eager.generate(prompts, NEW)
        _assert_same_batch(got, want)
        for b, (p, ref) in enumerate(zip(prompts, refs, strict=True)):
            new = _new_tokens(got, b)
            assert_greedy_equal(target, torch.cat([p, new])[None], torch.cat([p, ref])[None])
            solo = graph.generate(p[None], NEW)
            assert torch.equal(new, solo.sequences[0, p.numel() :]), (policy, budget, b)
            assert got.request_stats[b].accepted_lengths == solo.stats.accepted_lengths
        assert got.stats.batch_rounds == max(len(s.accepted_lengths) for s in got.request_stats)


@pytest.mark.parametrize("policy,budget", [("chain", 7), ("ddtree", 32)])
def test_batch_graph_trained_pair_stops_and_mid_round_ends(policy: str, budget: int) -> None:
    # Real acceptance (deep paths) with requests ending at different rounds: by a stop token
    # inside an accepted path, by max_new_tokens inside a round, or right at the first token.
    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, policy, budget=budget)
    graph = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=True)
    prompts = _prompts(32, (5, 12, 3, 9), seed=2)
    solo = [eager.generate(p[None], 40) for p in prompts]
    first = int(solo[2].sequences[0, -40])
    # A stop token from inside request 0's output (a deep accepted path if possible).
    new0 = solo[0].sequences[0, 5:].tolist()
    stop = [new0[min(len(new0) - 1, 17)], first]
    max_acc = 0
    for max_new in (1, 2, 13, 40):
        kw: dict[str, Any] = dict(stop_token_ids=stop, pad_token_id=0)
        got = graph.generate(prompts, max_new, **kw)
        want = eager.generate(prompts, max_new, **kw)
        _assert_same_batch(got, want)
        for b, p in enumerate(prompts):
            alone = eager.generate(p[None], max_new, stop_token_ids=stop)
            assert torch.equal(_new_tokens(got, b), alone.sequences[0, p.numel() :])
            max_acc = max(max_acc, *got.request_stats[b].accepted_lengths, 0)
        assert got.new_lengths[2] == 1 and got.request_stats[2].stopped
    assert max_acc >= 4


@pytest.mark.parametrize(
    "policy,budget,temperature,top_p", [("chain", 7, 1.0, None), ("ddtree", 16, 0.7, 0.9)]
)
def test_batch_graph_sampling_equals_eager(
    policy: str, budget: int, temperature: float, top_p: float | None
) -> None:
    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, policy, budget=budget)
    graph = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=True)
    prompts = _prompts(32, (6, 2, 11), seed=9)
    for seed in (0, 1, [5, 9, 2**40]):
        kw: dict[str, Any] = dict(temperature=temperature, top_p=top_p, seed=seed)
        got = graph.generate(prompts, 32, **kw)
        want = eager.generate(prompts, 32, **kw)
        _assert_same_batch(got, want)
    # Request 0 of a batch with an int seed draws exactly as the solo run with that seed.
    solo = graph.generate(prompts[0][None], 32, temperature=temperature, top_p=top_p, seed=1)
    got = graph.generate(prompts, 32, temperature=temperature, top_p=top_p, seed=1)
    assert torch.equal(_new_tokens(got, 0), solo.sequences[0, prompts[0].numel() :])


def test_batch_graph_round_has_no_host_sync() -> None:
    target, drafter = trained_pair()
    for policy in ("chain", "ddtree"):
        graph = SpeculativeDecoder(target, drafter, policy, budget=16, cuda_graphs=True)
        _runner(graph).round_context = forbid_host_sync
        prompts = _prompts(32, (4, 9, 1), seed=3)
        out = graph.generate(prompts, 30, stop_token_ids=[7])
        eager = SpeculativeDecoder(target, drafter, policy, budget=16)
        _assert_same_batch(out, eager.generate(prompts, 30, stop_token_ids=[7]))
        graph.generate(prompts, 12, temperature=0.8, top_k=5, seed=1)


def test_solo_and_batch_buffers_coexist_at_fixed_addresses() -> None:
    # One set of static buffers per batch size: alternating B = 1 and B = 3 calls neither
    # reallocates nor disturbs the other's buffers (so captured graphs stay valid).
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16, max_length=160, cuda_graphs=True)
    runner = _runner(dec)
    seen: dict[int, list[dict[str, int]]] = {1: [], 3: []}

    def record(r: int) -> None:
        assert runner._adapter is not None
        ptrs = {k: t.data_ptr() for k, t in runner.buffers().items()}
        seen[runner._adapter.batch_size].append(ptrs)

    runner.on_round = record
    prompts = _prompts(32, (4, 10, 7), seed=5)
    batch_ref = SpeculativeDecoder(target, drafter, "ddtree", budget=16).generate(prompts, 24)
    for _ in range(2):
        _assert_same_batch(dec.generate(prompts, 24), batch_ref)
        solo = dec.generate(prompts[1][None], 24)
        assert torch.equal(solo.sequences[0, 10:], _new_tokens(batch_ref, 1))
    assert sorted(runner.pool.rounds) == [1, 3]
    for b in (1, 3):
        assert len(seen[b]) > 4 and all(s == seen[b][0] for s in seen[b])
    assert set(seen[1][0].values()).isdisjoint(seen[3][0].values())


def test_batch_outside_the_buckets_runs_eagerly() -> None:
    # More stop tokens than the static stop buffer holds: the eager batch path runs it.
    from difftree_rt.engine.runner import MAX_STOPS

    target, drafter = trained_pair()
    graph = SpeculativeDecoder(target, drafter, "chain", budget=7, cuda_graphs=True)
    eager = SpeculativeDecoder(target, drafter, "chain", budget=7)
    rounds: list[int] = []
    _runner(graph).on_round = rounds.append
    prompts = _prompts(32, (5, 2), seed=4)
    stops = [31] * (MAX_STOPS + 1)
    got = graph.generate(prompts, 16, stop_token_ids=stops)
    assert rounds == []
    _assert_same_batch(got, eager.generate(prompts, 16, stop_token_ids=stops))


def test_replaced_adapters_are_released() -> None:
    # The decoder keeps one batch adapter (for the last B): the runner must not keep the KV
    # caches of the adapters it replaced alive.
    import gc
    import weakref

    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=8, cuda_graphs=True)
    runner = _runner(dec)
    prompts = _prompts(32, (3, 6, 4), seed=1)
    dec.generate(prompts[:2], 8)
    old = weakref.ref(runner.pool.rounds[2].adapter)
    dec.generate(prompts, 8)  # B = 3: a new batch adapter replaces the B = 2 one
    dec.generate(prompts[0][None], 8)  # B = 1 (the solo adapter) keeps B = 3 alive
    assert sorted(runner.pool.rounds) == [1, 3]
    assert all(k[0] in (1, 3) for k in runner.graphs)
    gc.collect()
    assert old() is None, "the replaced B = 2 adapter is still referenced"


def test_batch_graph_with_fixed_adapter_and_left_padding() -> None:
    from difftree_rt.models import TargetAdapter

    target, drafter = random_pair("llama")
    prompts = _prompts(128, (4, 11), seed=9)
    t = max(p.numel() for p in prompts)
    ids = torch.zeros((2, t), dtype=torch.long)
    mask = torch.zeros((2, t), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, t - p.numel() :] = p
        mask[b, t - p.numel() :] = 1
    adapter = TargetAdapter(
        target, max_length=64, batch_size=2, feature_layers=drafter.config.target_layer_ids
    )
    dec = SpeculativeDecoder(adapter, drafter, "ddtree", budget=7, cuda_graphs=True)
    ref = SpeculativeDecoder(target, drafter, "ddtree", budget=7).generate(prompts, NEW)
    got = dec.generate(ids, NEW, attention_mask=mask)
    _assert_same_batch(got, ref)
    with pytest.raises(ValueError, match="max_length"):
        SpeculativeDecoder(
            target, drafter, "ddtree", budget=7, max_length=30, cuda_graphs=True
        ).generate(prompts, NEW)


@pytest.mark.cuda
@pytest.mark.parametrize("policy,budget", [("chain", 7), ("ddtree", 16)])
def test_cuda_batch_capture_replay_identical(policy: str, budget: int) -> None:
    import copy

    target, drafter = (copy.deepcopy(m).to("cuda") for m in trained_pair())
    graph = SpeculativeDecoder(target, drafter, policy, budget=budget)
    assert graph.cuda_graphs  # the default on CUDA
    static = SpeculativeDecoder(target, drafter, policy, budget, cuda_graphs=True,
                                graph_capture=False)  # fmt: skip
    eager = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=False)
    prompts = [p.cuda() for p in _prompts(32, (3, 40, 9), seed=3)]
    for kw in (dict(), dict(temperature=0.8, seed=5), dict(stop_token_ids=[7])):
        got = graph.generate(prompts, 48, **kw)
        mid = static.generate(prompts, 48, **kw)
        # Captured vs the same rounds run eagerly: the same kernels, bit for bit.
        _assert_same_batch(got, mid)
        if "temperature" not in kw:
            want = eager.generate(prompts, 48, **kw)
            assert torch.equal(got.sequences, want.sequences), kw
            for b, p in enumerate(prompts):
                solo = graph.generate(p[None], 48, **kw)
                assert torch.equal(_new_tokens(got, b), solo.sequences[0, p.numel() :])
    assert any(k[0] == 3 for k in _runner(graph).graphs), "no batch graph was captured"


@pytest.mark.cuda
def test_cuda_batch_round_has_no_sync() -> None:
    import copy

    target, drafter = (copy.deepcopy(m).to("cuda", torch.bfloat16) for m in trained_pair())
    static = SpeculativeDecoder(target, drafter, "ddtree", 32, cuda_graphs=True,
                                graph_capture=False)  # fmt: skip
    _runner(static).round_context = forbid_host_sync  # sync debug mode "error" on CUDA
    graph = SpeculativeDecoder(target, drafter, "ddtree", 32)
    prompts = [p.cuda() for p in _prompts(32, (8, 2, 17, 5), seed=6)]
    a = static.generate(prompts, 64)
    b = graph.generate(prompts, 64)
    assert torch.equal(a.sequences, b.sequences)


def test_bench_graph_round_batch_section(tmp_path: Any) -> None:
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/
    from bench.bench_graph_round import main

    path = main(["--tiny", "--batch-sizes", "2", "--batch-only", "--out-dir", str(tmp_path)])
    (model,) = json.loads(Path(path).read_text())["models"]
    assert not model["runs"] and "ar" not in model  # --batch-only: no B = 1 table
    rows = model["batches"]
    assert [(r["batch"], r["policy"]) for r in rows] == [(2, "chain"), (2, "ddtree")]
    for r in rows:
        for key in ("graphs_off", "graphs_on"):
            assert r[key]["tokens"] == 2 * 12 and r[key]["rounds_per_s"] > 0


@pytest.mark.parametrize("graphs", [False, True])
def test_per_request_temperature_and_top_p(graphs: bool) -> None:
    # Each request samples with its own temperature / top-p (0 = greedy, None = no top-p) and
    # still equals its solo run with those values and its derived seed, in eager and graph mode.
    from difftree_rt.engine import request_seeds

    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16, cuda_graphs=graphs)
    prompts = _prompts(32, (6, 3, 9, 4), seed=12)
    temps = [0.0, 0.8, 1.3, 0.6]
    top_ps = [None, 0.9, None, 0.5]
    got = dec.generate(prompts, 30, temperature=temps, top_p=top_ps, seed=7)
    seeds = request_seeds(7, len(prompts))
    for b, p in enumerate(prompts):
        solo = dec.generate(p[None], 30, temperature=temps[b], top_p=top_ps[b], seed=seeds[b])
        assert torch.equal(_new_tokens(got, b), solo.sequences[0, p.numel() :]), b
        assert got.request_stats[b].accepted_lengths == solo.stats.accepted_lengths
    ref = greedy_reference(target, prompts[0][None], 30)[0, 6:]
    assert torch.equal(_new_tokens(got, 0), ref)  # the greedy request is HF greedy
    if graphs:
        eager = SpeculativeDecoder(target, drafter, "ddtree", budget=16)
        want = eager.generate(prompts, 30, temperature=temps, top_p=top_ps, seed=7)
        _assert_same_batch(got, want)
    with pytest.raises(ValueError, match="temperature: a sequence of per-request values"):
        dec.generate(prompts, 4, temperature=[0.5, 0.5])
    with pytest.raises(ValueError, match="top_p must be None or a float"):
        dec.generate(prompts, 4, temperature=0.5, top_p=[0.9, 1.5, None, None])


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("policy", ["ar", "ddtree"])
def test_per_request_max_new_tokens(graphs: bool, policy: str) -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(
        target, None if policy == "ar" else drafter, policy, budget=16, cuda_graphs=graphs
    )
    prompts = _prompts(32, (6, 3, 9, 4), seed=13)
    caps = [5, 23, 1, 12]
    temps = [0.0, 0.9, 0.0, 0.7]
    got = dec.generate(prompts, caps, stop_token_ids=[30], temperature=temps, seed=0)
    assert got.sequences.shape[1] == 9 + max(got.new_lengths.tolist())
    from difftree_rt.engine import request_seeds

    derived = request_seeds(0, 4)
    for b, p in enumerate(prompts):
        kw = dict(stop_token_ids=[30], temperature=temps[b])
        solo = dec.generate(p[None], caps[b], seed=derived[b], **kw)
        assert got.new_lengths[b] <= caps[b]
        assert torch.equal(_new_tokens(got, b), solo.sequences[0, p.numel() :]), b
        assert got.request_stats[b].accepted_lengths == solo.stats.accepted_lengths
    with pytest.raises(ValueError, match="max_new_tokens: a sequence of per-request values"):
        dec.generate(prompts, [4, 4])
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        dec.generate(prompts, [4, 0, 4, 4])
