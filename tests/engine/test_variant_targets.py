"""The attention-variant targets decode losslessly through the engine (fp32, CPU).

gpt-oss (sliding window on alternate layers + attention sinks), Gemma-4 (per-layer head sizes,
sliding layers, KV-sharing layers; also with ``attention_k_eq_v``) and DeepSeek-V3 (latent
attention), tiny random configs of transformers' own classes (tests/engine/variant_targets.py):

- greedy == HF ``generate`` for chain, ddtree (budgets 1, 5, 33), caddtree, presto, taps and
  d2sd; prompts of 1, 9, 30 tokens and one of 70 (W = 8: every generation crosses the window
  again); windowed layers on rings (a small prefill chunk: W - 1 + max(N, chunk) rows, chunked
  prefill) and on full-length caches;
- stop tokens inside accepted paths;
- batches of mixed lengths: each request equals its solo run and HF;
- graph mode (the GraphRunner's round functions, uncaptured on CPU) == eager;
- sampling on gpt-oss: the joint of the first three tokens over many seeds against the exact
  distribution (chi-square).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter
from test_greedy import _round_of_each_token, assert_greedy_equal
from test_sampling import chi_square, exact_joint
from variant_targets import (
    FAMILIES,
    RING_CHUNK,
    VOCAB,
    WINDOW,
    WINDOWED,
    make_variant_target,
    prefill_chunk,
    variant_pair,
)

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine import GenerationOutput
from difftree_rt.engine.runner import GraphRunner, forbid_host_sync
from difftree_rt.models.target import PREFILL_CHUNK

POLICIES = (
    ("chain", 7),
    ("ddtree", 1),
    ("ddtree", 5),
    ("ddtree", 33),
    ("caddtree", 33),
    ("presto", 33),
    ("taps", 33),
    ("d2sd", 33),
)
PROMPT_LENS = (1, 9, 30, 70)
NEW = 24
# (family, rings): windowed families on rings and on full-length caches; DeepSeek-V3 has no
# windowed layer (no ring either way).
CASES = [(f, r) for f in FAMILIES for r in ((True, False) if f in WINDOWED else (False,))]
CASE_IDS = [f"{f}-{'rings' if r else 'full'}" for f, r in CASES]


def _chunk(rings: bool) -> int:
    return RING_CHUNK if rings else PREFILL_CHUNK


@functools.cache
def _prompt(n: int) -> torch.Tensor:
    """``[n]`` random tokens, the same for every family."""
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(100 + n))


@functools.cache
def _reference(family: str, n: int, new: int = NEW) -> torch.Tensor:
    """HF greedy ``[1, n + new]`` for ``_prompt(n)``."""
    target, _ = variant_pair(family)
    return greedy_reference(target, _prompt(n)[None], new)


@functools.cache
def _decoder(family: str, rings: bool, policy: str, budget: int, graphs: bool = False):
    target, drafter = variant_pair(family)
    return SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=graphs)


def _generate(dec: SpeculativeDecoder, rings: bool, *args: Any, **kw: Any) -> GenerationOutput:
    # The adapters (solo and batch) are built inside generate: under the ring chunk when asked.
    with prefill_chunk(_chunk(rings)):
        out = dec.generate(*args, **kw)
    adapter = dec._batch_adapter if out.sequences.shape[0] > 1 else dec.adapter
    if adapter is not None:  # graph mode keeps its adapters in the runner
        assert adapter.cache.has_rings == rings, "ring layout"
    return out


@functools.cache
def _solo(family: str, rings: bool, policy: str, budget: int, n: int) -> GenerationOutput:
    """The eager decoder's greedy output for ``_prompt(n)`` (NEW tokens)."""
    dec = _decoder(family, rings, policy, budget)
    return _generate(dec, rings, _prompt(n)[None], NEW)


# ---------------------------------------------------------------------------------------------
# Greedy == HF
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,rings", CASES, ids=CASE_IDS)
def test_greedy_equals_hf_every_policy(family: str, rings: bool) -> None:
    target, _ = variant_pair(family)
    accepted: dict[tuple[str, int], int] = {}
    for policy, budget in POLICIES:
        for n in PROMPT_LENS:
            out = _solo(family, rings, policy, budget, n)
            ref = _reference(family, n)
            assert out.sequences.shape == ref.shape, (policy, budget, n)
            assert_greedy_equal(target, out.sequences, ref)
            assert out.stats.new_tokens == NEW
            assert sum(out.stats.emitted_per_round) + 1 == NEW
            accepted[policy, budget] = accepted.get((policy, budget), 0) + sum(
                out.stats.accepted_lengths
            )
    # Even a random drafter gets drafts accepted now and then on V = 128: committed tree paths
    # (not only bonus tokens) go through the windowed / latent caches.
    assert accepted["ddtree", 33] >= 3, accepted
    assert sum(accepted.values()) >= 10, accepted


@functools.cache
def _small_vocab_pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    target = make_variant_target(family, seed=2, vocab=16)
    return target, make_drafter(target, seed=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_deep_accepted_paths_small_vocab(family: str) -> None:
    # V = 16 and a 256-node tree: a random drafter's tree holds the target's path several tokens
    # deep, so multi-row paths are committed through the engine. The 250-token prompt fills the
    # windowed layers' rings (W - 1 + 257 slots) to within a few rows: the generation's commits
    # wrap them.
    target, drafter = _small_vocab_pair(family)
    rings = family in WINDOWED
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 16, (n,), generator=gen) for n in (250, 12)]
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=256)
    accepted: list[int] = []
    for p in prompts:
        out = _generate(dec, rings, p[None], 40)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, p[None], 40))
        accepted += out.stats.accepted_lengths
    if rings:
        slots = min(k.shape[2] for k in dec.adapter.cache.key_cache if k is not None)
        assert slots == WINDOW - 1 + 257 < 250 + 40
    batch = _generate(dec, rings, prompts, 40)
    for b, p in enumerate(prompts):
        solo = _generate(dec, rings, p[None], 40)
        assert torch.equal(_new_tokens(batch, b), solo.sequences[0, p.numel() :]), b
    assert 1 + sum(accepted) / len(accepted) > 1.4, accepted
    assert sum(a >= 2 for a in accepted) >= 3, accepted


def test_ring_layout_is_what_the_grid_runs() -> None:
    # The rings the grid's "rings" cases rely on: W - 1 + max(N, chunk) rows per windowed layer
    # (N = 34 for budget 33), full-length rows for the other layers and without the small chunk.
    target, drafter = variant_pair("gptoss")
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=33)
    with prefill_chunk(RING_CHUNK):
        ringed = dec._make_adapter(256)
    full = dec._make_adapter(256)
    rows = [k.shape[2] for k in ringed.cache.key_cache]
    assert rows == [WINDOW - 1 + 34, 256, WINDOW - 1 + 34, 256]
    assert ringed.cache.has_rings and not full.cache.has_rings
    assert [k.shape[2] for k in full.cache.key_cache] == [256] * 4


# ---------------------------------------------------------------------------------------------
# Stop tokens
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_stop_token_inside_accepted_path(family: str) -> None:
    target, _ = variant_pair(family)
    rings = family in WINDOWED
    spec = _decoder(family, rings, "ddtree", 33)
    others = [_decoder(family, rings, p, b) for p, b in (("chain", 7), ("presto", 33))]
    gen = torch.Generator().manual_seed(3)
    hits = 0
    for n in (12, 3, 40, 7, 21, 16):
        prompt = torch.randint(0, VOCAB, (1, n), generator=gen)
        full = _generate(spec, rings, prompt, 40)
        new = full.sequences[0, n:].tolist()
        where = _round_of_each_token(full.stats.emitted_per_round)
        # A token whose first occurrence sits inside an accepted path (not a round's last).
        cands = [i for i in range(1, len(new)) if new.index(new[i]) == i and not where[i][1]]
        if not cands:
            continue
        stop = new[cands[0]]
        ref = greedy_reference(target, prompt, 40, eos_token_id=stop)
        for dec in (spec, *others):
            out = _generate(dec, rings, prompt, 40, stop_token_ids=[stop])
            assert_greedy_equal(target, out.sequences, ref)
            assert out.sequences[0, -1].item() == stop and out.stats.stopped
            assert out.sequences.shape[1] == n + cands[0] + 1
        hits += 1
        if hits == 2:
            break
    assert hits >= 1


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
def _new_tokens(out: GenerationOutput, b: int) -> torch.Tensor:
    t = out.sequences.shape[1] - int(out.new_lengths.max())
    return out.sequences[b, t : t + int(out.new_lengths[b])]


# One policy beyond ddtree per family, so every policy runs a batch on some variant.
BATCH_POLICIES = {
    "gptoss": (("ddtree", 33), ("presto", 33), ("chain", 7)),
    "gemma4": (("ddtree", 33), ("d2sd", 33), ("ddtree", 5)),
    "gemma4_keqv": (("ddtree", 33), ("taps", 33)),
    "deepseek": (("ddtree", 33), ("caddtree", 33), ("ddtree", 1)),
}


@pytest.mark.parametrize("family,rings", CASES, ids=CASE_IDS)
def test_batch_of_mixed_lengths_equals_solo_and_hf(family: str, rings: bool) -> None:
    target, _ = variant_pair(family)
    lens = (30, 1, 70, 9)
    prompts = [_prompt(n) for n in lens]
    policies = BATCH_POLICIES[family] if rings or family not in WINDOWED else (("ddtree", 33),)
    for policy, budget in policies:
        dec = _decoder(family, rings, policy, budget)
        out = _generate(dec, rings, prompts, NEW)
        assert out.new_lengths.tolist() == [NEW] * len(lens)
        assert out.prompt_lengths.tolist() == list(lens)
        for b, n in enumerate(lens):
            got = _new_tokens(out, b)
            solo = _solo(family, rings, policy, budget, n)
            assert torch.equal(got, solo.sequences[0, n:]), (policy, budget, b)
            assert out.request_stats[b].accepted_lengths == solo.stats.accepted_lengths
            assert_greedy_equal(target, torch.cat([prompts[b], got])[None], _reference(family, n))


# ---------------------------------------------------------------------------------------------
# Graph mode (uncaptured) == eager
# ---------------------------------------------------------------------------------------------
GRAPH_POLICIES = {
    "gptoss": (("ddtree", 33), ("presto", 33)),
    "gemma4": (("ddtree", 33), ("d2sd", 33)),
    "gemma4_keqv": (("ddtree", 33), ("taps", 33)),
    "deepseek": (("ddtree", 33), ("caddtree", 33), ("chain", 7)),
}


def _graph_decoder(family: str, policy: str, budget: int) -> tuple[SpeculativeDecoder, list[int]]:
    """The graph-mode decoder (rings on for windowed families) and the rounds it runs from now."""
    dec = _decoder(family, family in WINDOWED, policy, budget, graphs=True)
    rounds: list[int] = []
    runner: GraphRunner = dec._runner()
    runner.on_round = rounds.append
    return dec, rounds


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_mode_equals_eager(family: str) -> None:
    rings = family in WINDOWED
    for policy, budget in GRAPH_POLICIES[family]:
        eager = _decoder(family, rings, policy, budget)
        graph, rounds = _graph_decoder(family, policy, budget)
        for n in (9, 70):
            prompt = _prompt(n)[None]
            got = _generate(graph, rings, prompt, NEW)
            want = _solo(family, rings, policy, budget, n)
            assert torch.equal(got.sequences, want.sequences), (policy, n)
            assert got.stats.accepted_lengths == want.stats.accepted_lengths
            kw: dict[str, Any] = dict(temperature=0.9, seed=5)
            got = _generate(graph, rings, prompt, NEW, **kw)
            want = _generate(eager, rings, prompt, NEW, **kw)
            assert torch.equal(got.sequences, want.sequences), (policy, n, kw)
            assert got.stats.accepted_lengths == want.stats.accepted_lengths
        assert rounds, f"{policy} did not run in graph mode"
        adapter = graph._runner()._adapter
        assert adapter is not None and adapter.cache.has_rings == rings
        prompts = [_prompt(n) for n in (30, 1, 9)]
        got = _generate(graph, rings, prompts, NEW)
        want = _generate(eager, rings, prompts, NEW)
        assert torch.equal(got.sequences, want.sequences), policy
        for g, w in zip(got.request_stats, want.request_stats, strict=True):
            assert g.accepted_lengths == w.accepted_lengths


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_round_reads_nothing_on_the_host(family: str) -> None:
    # The guard costs a Python dispatch per aten op: one short request per policy (rings on for
    # the windowed families), the same rounds as above.
    rings = family in WINDOWED
    for policy, budget in GRAPH_POLICIES[family]:
        dec, rounds = _graph_decoder(family, policy, budget)
        runner: GraphRunner = dec._runner()
        runner.round_context = forbid_host_sync
        try:
            out = _generate(dec, rings, _prompt(30)[None], 6)
        finally:
            runner.round_context = contextlib.nullcontext
        assert rounds, f"{policy} did not run in graph mode"
        assert torch.equal(
            out.sequences, _solo(family, rings, policy, budget, 30).sequences[:, :36]
        )


# ---------------------------------------------------------------------------------------------
# Sampling (gpt-oss: windows and sinks in the distribution)
# ---------------------------------------------------------------------------------------------
def test_gptoss_sampling_equals_plain_target_sampling() -> None:
    # A nearly flat V = 16 gpt-oss (init 0.1, sinks drawn large) so trees are accepted often;
    # the prompt is longer than the window and the rings are on. The requests of a batch draw as
    # solo runs with seeds request_seeds(seed, B) (test_batch.py), so a batch of B copies of the
    # prompt gives B independent samples per call.
    steps, vocab, batch, calls = 3, 16, 100, 20
    with torch.random.fork_rng():
        target = make_variant_target("gptoss", seed=4, vocab=vocab, init=0.1)
        drafter = make_drafter(target, seed=4)
    prompt = torch.randint(0, vocab, (1, WINDOW + 3), generator=torch.Generator().manual_seed(4))
    probs = exact_joint(target, prompt, steps, temperature=1.0)
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=48)
    counts = torch.zeros(vocab**steps, dtype=torch.float64)
    deep = 0
    for call in range(calls):
        out = _generate(dec, True, [prompt[0]] * batch, steps, temperature=1.0, seed=1000 * call)
        for b in range(batch):
            index = 0
            for t in out.sequences[b, -steps:].tolist():
                index = index * vocab + t
            counts[index] += 1
            acc = out.request_stats[b].accepted_lengths
            deep += bool(acc) and acc[0] >= 2
    num = batch * calls
    assert deep > num // 20, deep  # tokens 2 and 3 often come from accepted tree nodes
    assert chi_square(counts, probs) > 1e-3
    shape = (vocab,) * steps
    for pos in range(steps):
        other = [d for d in range(steps) if d != pos]
        m_counts = counts.reshape(shape).sum(dim=other)
        assert chi_square(m_counts, probs.reshape(shape).sum(dim=other)) > 1e-3
