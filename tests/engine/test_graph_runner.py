"""Graph mode (GraphRunner, engine/runner.py): the static-buffer round is lossless, sync-free.

On CPU the runner runs its round functions eagerly (``cuda_graphs=True`` on a CPU target): the
same code a CUDA graph captures. Checked here: greedy output identical to HF ``generate`` and to
the eager decoder (same rounds), sampled output identical to the eager decoder for a seed, no
host read inside a round, fixed buffer addresses, rounds past the end are no-ops, the eager
fallback. The ``cuda`` tests (capture + replay) skip without a GPU.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, random_pair, trained_pair
from test_greedy import _round_of_each_token, assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.runner import (
    MAX_STOPS,
    GraphRunner,
    HostSyncError,
    forbid_host_sync,
    span_bucket,
)
from difftree_rt.engine.stats import GenerationStats, PhaseTimer
from difftree_rt.policies import DDTreePolicy, PolicyInput, TapsPolicy
from difftree_rt.tree import DraftTree

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/

BUDGETS = (1, 7, 64)
PROMPT_LENS = (1, 6, 23)
NEW = 24


def _pair(policy: str, budget: int, **kw: Any) -> tuple[SpeculativeDecoder, SpeculativeDecoder]:
    """(eager, graph-mode) decoders on the trained pair."""
    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, policy, budget=budget)
    graph = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=True, **kw)
    return eager, graph


def _runner(dec: SpeculativeDecoder) -> GraphRunner:
    runner: GraphRunner = dec._runner()
    return runner


# ---------------------------------------------------------------------------------------------
# Greedy: lossless and identical to the eager decoder
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["chain", "ddtree"])
def test_greedy_identical_to_hf_and_eager_random_pair(policy: str) -> None:
    target, drafter = random_pair("qwen3")
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 128, (1, n), generator=gen) for n in PROMPT_LENS]
    for budget in BUDGETS:
        eager = SpeculativeDecoder(target, drafter, policy, budget=budget)
        graph = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=True)
        assert graph.cuda_graphs and not eager.cuda_graphs
        for prompt in prompts:
            ref = greedy_reference(target, prompt, NEW)
            got = graph.generate(prompt, NEW)
            want = eager.generate(prompt, NEW)
            assert_greedy_equal(target, got.sequences, ref)
            assert torch.equal(got.sequences, want.sequences), (policy, budget)
            assert got.stats.accepted_lengths == want.stats.accepted_lengths
            assert got.stats.emitted_per_round == want.stats.emitted_per_round
            assert got.stats.new_tokens == NEW


@pytest.mark.parametrize("policy,budget", [("chain", 7), ("ddtree", 7), ("ddtree", 64)])
def test_greedy_identical_with_realistic_acceptance(policy: str, budget: int) -> None:
    target, _ = trained_pair()
    eager, graph = _pair(policy, budget)
    gen = torch.Generator().manual_seed(5)
    max_acc = 0
    for n in (3, 17):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        got = graph.generate(prompt, 48)
        want = eager.generate(prompt, 48)
        assert_greedy_equal(target, got.sequences, greedy_reference(target, prompt, 48))
        assert torch.equal(got.sequences, want.sequences)
        assert got.stats.accepted_lengths == want.stats.accepted_lengths
        max_acc = max(max_acc, *got.stats.accepted_lengths)
    assert max_acc >= 4  # deep (and, for ddtree, non-contiguous) paths were committed


@pytest.mark.parametrize("policy,budget", [("chain", 7), ("ddtree", 64)])
def test_max_new_tokens_ending_mid_round(policy: str, budget: int) -> None:
    target, _ = trained_pair()
    eager, graph = _pair(policy, budget)
    prompt = torch.tensor([[4, 7, 1, 30]])
    ref = greedy_reference(target, prompt, 30)
    full = eager.generate(prompt, 30)
    where = _round_of_each_token(full.stats.emitted_per_round)
    assert [n for n in range(1, 30) if not where[n - 1][1]], "no cut inside a round"
    for n in range(1, 31):
        out = graph.generate(prompt, n)
        assert out.sequences.shape[1] == 4 + n
        assert torch.equal(out.sequences, ref[:, : 4 + n])
        assert out.stats.new_tokens == n and not out.stats.stopped


@pytest.mark.parametrize("policy", ["chain", "ddtree"])
def test_stop_token_inside_accepted_path(policy: str) -> None:
    target, _ = trained_pair()
    eager, graph = _pair(policy, 32)
    gen = torch.Generator().manual_seed(2)
    hits = 0
    for _ in range(6):
        prompt = torch.randint(0, 32, (1, 5), generator=gen)
        full = eager.generate(prompt, 40)
        new = full.sequences[0, 5:].tolist()
        where = _round_of_each_token(full.stats.emitted_per_round)
        cands = [i for i in range(1, len(new)) if new.index(new[i]) == i and not where[i][1]]
        if not cands:
            continue
        stop = new[cands[0]]
        hits += 1
        out = graph.generate(prompt, 40, stop_token_ids=[stop, 31 if stop != 31 else 30])
        ref = greedy_reference(target, prompt, 40, eos_token_id=[stop, 31 if stop != 31 else 30])
        assert torch.equal(out.sequences, ref)
        assert out.stats.stopped
        want = eager.generate(prompt, 40, stop_token_ids=[stop, 31 if stop != 31 else 30])
        assert torch.equal(out.sequences, want.sequences)
        assert out.stats.emitted_per_round == want.stats.emitted_per_round
    assert hits >= 2


def test_stop_token_as_first_token() -> None:
    target, _ = trained_pair()
    _, graph = _pair("ddtree", 8)
    prompt = torch.tensor([[1, 2, 3]])
    first = int(greedy_reference(target, prompt, 1)[0, -1])
    out = graph.generate(prompt, 10, stop_token_ids=torch.tensor([first]))
    assert out.sequences.tolist() == [[1, 2, 3, first]]
    assert out.stats.rounds == 0 and out.stats.stopped


# ---------------------------------------------------------------------------------------------
# Sampling: identical to the eager decoder for the same seed (keyed per-node draws)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy,budget,temperature,top_p", [("chain", 7, 1.0, None), ("ddtree", 16, 0.7, 0.9)]
)
def test_sampling_identical_to_eager(policy: str, budget: int, temperature: float, top_p) -> None:
    eager, graph = _pair(policy, budget)
    gen = torch.Generator().manual_seed(9)
    for seed in range(4):
        prompt = torch.randint(0, 32, (1, 6), generator=gen)
        kw = dict(temperature=temperature, top_p=top_p, seed=seed)
        got = graph.generate(prompt, 32, **kw)
        want = eager.generate(prompt, 32, **kw)
        assert torch.equal(got.sequences, want.sequences), seed
        assert got.stats.accepted_lengths == want.stats.accepted_lengths


# ---------------------------------------------------------------------------------------------
# "ar" in graph mode: one target step per round (the graph-mode baseline)
# ---------------------------------------------------------------------------------------------
def test_ar_graph_mode_identical_to_eager_and_hf() -> None:
    target, _ = random_pair("llama")
    eager = SpeculativeDecoder(target, None, "ar")
    graph = SpeculativeDecoder(target, None, "ar", cuda_graphs=True)
    runner = _runner(graph)
    rounds: list[int] = []
    runner.on_round = rounds.append
    runner.round_context = forbid_host_sync
    gen = torch.Generator().manual_seed(21)
    for n in (1, 9):
        prompt = torch.randint(0, 128, (1, n), generator=gen)
        ref = greedy_reference(target, prompt, 25)
        for kw in (dict(), dict(temperature=0.9, top_k=20, seed=3), dict(stop_token_ids=[7])):
            got = graph.generate(prompt, 25, **kw)
            want = eager.generate(prompt, 25, **kw)
            assert torch.equal(got.sequences, want.sequences), kw
            assert got.stats.emitted_per_round == want.stats.emitted_per_round, kw
            assert got.stats.accepted_lengths == want.stats.accepted_lengths, kw
            if not kw:
                assert torch.equal(got.sequences, ref)
        for cut in (1, 2, 5):
            assert torch.equal(graph.generate(prompt, cut).sequences, ref[:, : n + cut])
    assert rounds and runner._dcache is None and runner.path_cols == 1
    prompts = [torch.randint(0, 128, (n,), generator=gen) for n in (3, 12, 1)]
    got, want = graph.generate(prompts, 20), eager.generate(prompts, 20)
    assert torch.equal(got.sequences, want.sequences)
    kw = dict(temperature=1.0, seed=[4, 5, 6])
    assert torch.equal(graph.generate(prompts, 20, **kw).sequences,
                       eager.generate(prompts, 20, **kw).sequences)  # fmt: skip


def test_sampling_values_are_buffers_not_graph_keys() -> None:
    # One decoder, one set of buffers, several temperatures / top-k / top-p values in a row: each
    # run equals the eager decoder, and the sampling parameters are [B] buffers written in place
    # (same addresses), so no sampling value or structure is part of a graph's key.
    eager, graph = _pair("ddtree", 16)
    prompt = torch.tensor([[4, 4, 2, 9, 1]])
    names = ("temperature", "top_k", "top_p", "seed")
    seen = []
    for kw in (
        dict(temperature=0.7, top_p=0.9),
        dict(temperature=1.3, top_p=0.5),
        dict(temperature=1.0),
        dict(temperature=0.4, top_k=6, top_p=0.8),
        dict(temperature=0.0),
    ):
        got = graph.generate(prompt, 28, seed=2, **kw)
        want = eager.generate(prompt, 28, seed=2, **kw)
        assert torch.equal(got.sequences, want.sequences), kw
        bufs = _runner(graph).buffers()
        seen.append({n: bufs[n].data_ptr() for n in names})
    assert all(s == seen[0] for s in seen)
    assert all(len(key) == 3 for key in _runner(graph).graphs)  # (B, N bucket, span) only


# ---------------------------------------------------------------------------------------------
# Graph-safety: no host sync, fixed addresses, no-op rounds after the end
# ---------------------------------------------------------------------------------------------
def test_round_performs_no_host_sync() -> None:
    target, _ = trained_pair()
    for policy in ("chain", "ddtree"):
        _, graph = _pair(policy, 16)
        _runner(graph).round_context = forbid_host_sync
        prompt = torch.tensor([[3, 1, 4, 1, 5]])
        out = graph.generate(prompt, 40)  # greedy
        assert torch.equal(out.sequences, greedy_reference(target, prompt, 40))
        graph.generate(prompt, 20, temperature=0.8, top_k=5, seed=1, stop_token_ids=[7])


def test_no_sync_guard_can_fail() -> None:
    # A "graph-safe" policy that reads a device value: the guard must catch it.
    class Leaky(DDTreePolicy):
        def select(self, inputs: PolicyInput) -> DraftTree:
            if inputs.draft_logits.sum() > 0:  # Tensor.__bool__: a host sync
                pass
            return super().select(inputs)

    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, Leaky(8), cuda_graphs=True)
    _runner(dec).round_context = forbid_host_sync
    with pytest.raises(HostSyncError, match="__bool__"):
        dec.generate(torch.tensor([[1, 2]]), 8)
    with forbid_host_sync(), pytest.raises(HostSyncError, match="item"):
        torch.ones(1).item()
    assert torch.ones(1).item() == 1.0  # restored

    # Syncs inside C++ ops (CUDA's sync debug mode sees them; the dispatch guard too, on CPU).
    class Masking(DDTreePolicy):
        def select(self, inputs: PolicyInput) -> DraftTree:
            logits = inputs.draft_logits
            _ = logits[logits > 0]  # boolean indexing: a data-dependent shape
            return super().select(inputs)

    dec = SpeculativeDecoder(target, drafter, Masking(8), cuda_graphs=True)
    _runner(dec).round_context = forbid_host_sync
    with pytest.raises(HostSyncError, match=r"aten\.index"):
        dec.generate(torch.tensor([[1, 2]]), 8)
    x = torch.arange(6)
    for bad in (
        lambda: x.nonzero(),
        lambda: torch.masked_select(x, x > 2),
        lambda: x.repeat_interleave(x),
        lambda: torch.unique(x),
        lambda: torch.histc(x.float(), bins=4),  # min == max: the range is read back
    ):
        with forbid_host_sync(), pytest.raises(HostSyncError):
            bad()
    with forbid_host_sync():  # fixed-shape relatives pass (histc over a given range: MoE routing)
        torch.where(x > 2, x, 0), x.gather(0, x.flip(0)), x.repeat_interleave(2), x[x.flip(0)]
        torch.histc(x.float(), bins=6, min=0, max=5)


def test_buffer_addresses_never_change() -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16, max_length=200, cuda_graphs=True)
    runner = _runner(dec)
    seen: list[dict[str, int]] = []
    runner.on_round = lambda r: seen.append({k: t.data_ptr() for k, t in runner.buffers().items()})
    gen = torch.Generator().manual_seed(1)
    for n in (4, 30):
        dec.generate(torch.randint(0, 32, (1, n), generator=gen), 40, stop_token_ids=[5])
    assert len(seen) > 4 and len(seen[0]) > 20
    assert all(s == seen[0] for s in seen)


def test_rounds_after_done_are_noops() -> None:
    _, graph = _pair("ddtree", 16)
    runner = _runner(graph)
    prompt = torch.tensor([[2, 7, 1, 8]])
    out = graph.generate(prompt, 17)
    st, adapter, dc = runner._state, runner._adapter, runner._dcache
    assert st is not None and adapter is not None and dc is not None
    assert bool(st.done.all()) and int(st.generated[0]) == 17
    # The loop already ran one round past the end; more rounds must change nothing.
    before = [t.clone() for t in (st.out, st.generated, st.bonus, adapter.base_len, dc.lengths)]
    timer = PhaseTimer(GenerationStats("ddtree", 16), runner.device, False)
    for _ in range(3):
        with torch.inference_mode():  # as in generate (the buffers are inference tensors)
            runner._run_round(span_bucket(64, dc.capacity, runner.span_min), runner.capacity, timer)
            adapter.cache.set_fixed_span(None)
    after = (st.out, st.generated, st.bonus, adapter.base_len, dc.lengths)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert int(st.status[0, 4]) == 0  # nothing emitted
    assert torch.equal(out.sequences[0, 4:], st.out[0, :17])


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_capture_warm_up_leaves_no_trace(temperature: float) -> None:
    # Before a capture the runner runs rounds for real and undoes them (the same code on CPU):
    # warming up in the middle of a request must not change its output.
    eager, graph = _pair("ddtree", 16)
    runner = _runner(graph)
    runner.warmup = 3

    def warm(r: int) -> None:
        if r in (1, 4):
            span = span_bucket(256, runner._dcache.capacity)  # type: ignore[union-attr]
            runner._warm_up(span, runner.capacity)

    runner.on_round = warm
    prompt = torch.tensor([[6, 2, 8, 3, 1]])
    got = graph.generate(prompt, 40, temperature=temperature, seed=3)
    want = eager.generate(prompt, 40, temperature=temperature, seed=3)
    assert torch.equal(got.sequences, want.sequences)
    assert got.stats.accepted_lengths == want.stats.accepted_lengths


def test_span_buckets_switch_losslessly() -> None:
    # Small buckets: the key span changes several times within one request.
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16, cuda_graphs=True)
    runner = _runner(dec)
    runner.span_min = 16
    spans: list[int] = []
    run_round = runner._run_round

    def spy(span: int, nb: int, timer: PhaseTimer) -> None:
        spans.append(span)
        run_round(span, nb, timer)

    runner._run_round = spy  # type: ignore[method-assign]
    prompt = torch.randint(0, 32, (1, 9), generator=torch.Generator().manual_seed(4))
    out = dec.generate(prompt, 60)
    assert torch.equal(out.sequences, greedy_reference(target, prompt, 60))
    assert len(set(spans)) >= 3 and spans == sorted(spans)
    # The drafter sees the same context as the eager loop's across the bucket switches.
    eager = SpeculativeDecoder(target, drafter, "ddtree", budget=16).generate(prompt, 60)
    assert out.stats.accepted_lengths == eager.stats.accepted_lengths


def test_span_bucket() -> None:
    assert span_bucket(1, 4096) == 256
    assert span_bucket(257, 4096) == 512
    assert span_bucket(3000, 3100) == 3100
    assert span_bucket(5, 100, minimum=4) == 8
    with pytest.raises(ValueError, match="rows"):
        span_bucket(200, 100)


def test_streaming_matches_output() -> None:
    _, graph = _pair("ddtree", 16)
    chunks: list[list[int]] = []
    prompt = torch.tensor([[9, 9, 2]])
    out = graph.generate(prompt, 33, streamer=chunks.append, stop_token_ids=[0])
    assert [t for c in chunks for t in c] == out.sequences[0, 3:].tolist()
    assert len(chunks) == out.stats.rounds + 1


# ---------------------------------------------------------------------------------------------
# Dispatch and errors
# ---------------------------------------------------------------------------------------------
def test_eager_fallback_outside_buckets() -> None:
    target, _ = trained_pair()
    _, graph = _pair("chain", 7)
    rounds: list[int] = []
    _runner(graph).on_round = rounds.append
    stops = [31] * (MAX_STOPS + 1)  # valid but more than the static stop buffer holds
    prompt = torch.tensor([[1, 5, 9]])
    out = graph.generate(prompt, 20, stop_token_ids=stops)
    assert rounds == []  # the eager path ran it
    assert torch.equal(out.sequences, greedy_reference(target, prompt, 20, eos_token_id=stops))


def _fake_cuda_capture(monkeypatch: pytest.MonkeyPatch, fail: bool) -> list[str]:
    """CPU stand-ins for the CUDA capture API; ``fail``: entering a capture raises, as CUDA does
    for an op that cannot be captured (before anything is recorded). Returns the call log."""
    log: list[str] = []

    class Stream:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def wait_stream(self, other: Any) -> None:
            log.append("wait")

    class Graph:
        def replay(self) -> None:
            raise AssertionError("a failed capture must not be replayed")

    @contextlib.contextmanager
    def graph(g: Any, pool: Any = None) -> Iterator[None]:
        log.append("capture")
        if fail:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        yield

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    return log


def test_failed_capture_falls_back_to_uncaptured_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    eager, graph = _pair("ddtree", 16)
    runner = _runner(graph)
    runner.capture = True  # as on a CUDA target
    log = _fake_cuda_capture(monkeypatch, fail=True)
    prompt = torch.tensor([[5, 3, 8, 1]])
    with pytest.warns(RuntimeWarning, match="capture failed .*operation not permitted"):
        got = graph.generate(prompt, 30)
    assert log.count("capture") == 1 and not runner.capture and not runner.graphs
    want = eager.generate(prompt, 30)
    assert torch.equal(got.sequences, want.sequences)  # warm-up + failed capture left no trace
    assert got.stats.accepted_lengths == want.stats.accepted_lengths
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls run uncaptured silently
        assert torch.equal(graph.generate(prompt, 30).sequences, want.sequences)


def test_warm_up_error_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the capture is recoverable: an error in the (real) warm-up rounds propagates.
    _, graph = _pair("chain", 7)
    runner = _runner(graph)
    runner.capture = True
    _fake_cuda_capture(monkeypatch, fail=False)

    def broken(span: int, nb: int) -> None:
        raise RuntimeError("boom in warm-up")

    monkeypatch.setattr(runner, "_warm_up", broken)
    with pytest.raises(RuntimeError, match="boom in warm-up"):
        graph.generate(torch.tensor([[1, 2, 3]]), 10)
    assert runner.capture


def test_cuda_graphs_argument() -> None:
    target, drafter = trained_pair()
    assert not SpeculativeDecoder(target, drafter, "ddtree").cuda_graphs  # CPU default: off
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        SpeculativeDecoder(target, drafter, "ddtree", cuda_graphs="yes")  # type: ignore[arg-type]
    assert SpeculativeDecoder(target, None, "ar", cuda_graphs=True).cuda_graphs
    with pytest.raises(ValueError, match="validate"):
        SpeculativeDecoder(target, drafter, "ddtree", cuda_graphs=True, validate=True)
    assert not SpeculativeDecoder(target, drafter, "presto", cuda_graphs=None).cuda_graphs
    for policy in ("caddtree", "taps", "d2sd", "presto"):
        assert SpeculativeDecoder(target, drafter, policy, cuda_graphs=True).cuda_graphs

    class Trained:  # a trained TAPS scorer reads the pool on the host: eager only
        def log_qc(self, *args: Any) -> torch.Tensor:
            raise AssertionError("not called")

    with pytest.raises(ValueError, match="graph-safe"):
        SpeculativeDecoder(target, drafter, TapsPolicy(8, scorer=Trained()), cuda_graphs=True)
    with pytest.raises(ValueError, match="too small"):
        dec = SpeculativeDecoder(target, drafter, "ddtree", 8, max_length=40, cuda_graphs=True)
        dec.generate(torch.tensor([[1] * 30]), 8)


def test_bench_graph_round_tiny(tmp_path: Path) -> None:
    import json

    from bench.bench_graph_round import main

    from difftree_rt.policies.cost import CostTable

    path = main(["--tiny", "--out-dir", str(tmp_path)])
    result = json.loads(path.read_text())
    (model,) = result["models"]
    assert [r["policy"] for r in model["runs"]] == ["chain", "ddtree"]
    for r in model["runs"]:
        for key in ("graphs_off", "graphs_on"):
            assert r[key]["rounds_per_s"] > 0 and r[key]["tokens"] == 12
        assert r["verify_us"]["median"] > 0 and r["draft_us"]["median"] > 0
    table = CostTable.load(model["cost_table_path"])
    assert table.contexts == [32, 64] and table.nodes == [0, 1, 4] and table.unit == "ms"
    assert table.verify_costs(8, 48).shape == (9,)


# ---------------------------------------------------------------------------------------------
# CUDA: capture + replay identical to eager
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize(
    "policy,budget",
    [
        ("ar", 1),
        ("chain", 7),
        ("ddtree", 16),
        ("ddtree", 64),
        ("caddtree", 32),
        ("taps", 32),
        ("d2sd", 32),
        ("presto", 32),
    ],
)
def test_cuda_capture_replay_identical_to_eager(policy: str, budget: int) -> None:
    import copy

    target, drafter = (copy.deepcopy(m).to("cuda") for m in trained_pair())
    eager = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=False)
    graph = SpeculativeDecoder(target, drafter, policy, budget=budget)
    assert graph.cuda_graphs  # the default on CUDA
    static = SpeculativeDecoder(target, drafter, policy, budget, cuda_graphs=True,
                                graph_capture=False)  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    for n in (3, 40):
        prompt = torch.randint(0, 32, (1, n), generator=gen).cuda()
        ref = greedy_reference(target, prompt, 48)
        for kw in (dict(), dict(temperature=0.8, seed=5), dict(stop_token_ids=[7])):
            got = graph.generate(prompt, 48, **kw)
            mid = static.generate(prompt, 48, **kw)
            # Captured vs the same round run eagerly: the same kernels, bit for bit.
            assert torch.equal(mid.sequences, got.sequences), kw
            assert got.stats.accepted_lengths == mid.stats.accepted_lengths
            if "temperature" not in kw:
                # Greedy: lossless, and equal to the eager decoder (whose drafter attends over
                # the exact span: its trees may differ at fp32 near-ties, its tokens may not).
                want = eager.generate(prompt, 48, **kw)
                assert torch.equal(got.sequences, want.sequences), kw
                if not kw:
                    assert torch.equal(got.sequences, ref)
    assert _runner(graph).graphs, "nothing was captured"


@pytest.mark.cuda
def test_cuda_graph_round_has_no_sync_and_fixed_addresses() -> None:
    import copy

    target, drafter = (copy.deepcopy(m).to("cuda", torch.bfloat16) for m in trained_pair())
    static = SpeculativeDecoder(target, drafter, "ddtree", 32, cuda_graphs=True,
                                graph_capture=False)  # fmt: skip
    _runner(static).round_context = forbid_host_sync  # sync debug mode "error" on CUDA
    graph = SpeculativeDecoder(target, drafter, "ddtree", 32, max_length=512)
    runner = _runner(graph)
    seen: list[dict[str, int]] = []
    runner.on_round = lambda r: seen.append({k: t.data_ptr() for k, t in runner.buffers().items()})
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]], device="cuda")
    a = static.generate(prompt, 64)
    b = graph.generate(prompt, 64)
    # bf16: the same kernels on the same shapes, captured or not -> the same tokens.
    assert torch.equal(a.sequences, b.sequences)
    assert all(s == seen[0] for s in seen)
