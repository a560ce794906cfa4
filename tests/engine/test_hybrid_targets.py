"""Hybrid Gated-DeltaNet targets decode losslessly through the engine (fp32, CPU).

Qwen3-Next, Qwen3.5 and Qwen3.5-MoE, tiny random configs of transformers' own classes
(tests/engine/hybrid_targets.py): three linear-attention layers per full-attention layer.

- greedy == HF ``generate`` for every policy (chain, ddtree at budgets 1, 5, 33, caddtree,
  presto, taps, d2sd, auto); prompts of 1, 9, 30 and 200 tokens (200 > the 64-row commit chunk
  of a causal forward: the prefill commits its linear states chunk by chunk);
- stop tokens inside accepted paths;
- batches of mixed lengths: each request equals its solo run and HF;
- graph mode (the GraphRunner's round functions, uncaptured on CPU) == eager, and its round
  reads nothing on the host;
- sampling: the joint of the first three tokens over many seeds against the exact distribution
  (chi-square).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter
from hybrid_targets import FAMILIES, VOCAB, hybrid_pair, make_hybrid_target
from test_greedy import _round_of_each_token, assert_greedy_equal
from test_sampling import chi_square, exact_joint

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine import GenerationOutput
from difftree_rt.engine.runner import GraphRunner, forbid_host_sync

POLICIES = (
    ("chain", 7),
    ("ddtree", 1),
    ("ddtree", 5),
    ("ddtree", 33),
    ("caddtree", 33),
    ("presto", 33),
    ("taps", 33),
    ("d2sd", 33),
    ("auto", 33),
)
PROMPT_LENS = (1, 9, 30, 200)
NEW = 24


@functools.cache
def _prompt(n: int) -> torch.Tensor:
    """``[n]`` random tokens, the same for every family."""
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(200 + n))


@functools.cache
def _reference(family: str, n: int, new: int = NEW) -> torch.Tensor:
    target, _ = hybrid_pair(family)
    return greedy_reference(target, _prompt(n)[None], new)


@functools.cache
def _decoder(family: str, policy: str, budget: int, graphs: bool = False) -> SpeculativeDecoder:
    target, drafter = hybrid_pair(family)
    return SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=graphs)


@functools.cache
def _solo(family: str, policy: str, budget: int, n: int) -> GenerationOutput:
    return _decoder(family, policy, budget).generate(_prompt(n)[None], NEW)


def _new_tokens(out: GenerationOutput, b: int) -> torch.Tensor:
    t = out.sequences.shape[1] - int(out.new_lengths.max())
    return out.sequences[b, t : t + int(out.new_lengths[b])]


# ---------------------------------------------------------------------------------------------
# Greedy == HF
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_hf_every_policy(family: str) -> None:
    target, _ = hybrid_pair(family)
    accepted: dict[tuple[str, int], int] = {}
    # Every prompt length on Qwen3-Next; the shortest and the longest (past a commit chunk) on
    # the others (their batches below run all four lengths too).
    lens = PROMPT_LENS if family == "qwen3_next" else (1, 200)
    for policy, budget in POLICIES:
        for n in lens:
            out = _solo(family, policy, budget, n)
            ref = _reference(family, n)
            assert out.sequences.shape == ref.shape, (policy, budget, n)
            assert_greedy_equal(target, out.sequences, ref)
            assert out.stats.new_tokens == NEW
            accepted[policy, budget] = accepted.get((policy, budget), 0) + sum(
                out.stats.accepted_lengths
            )
    # Drafts are accepted now and then even from a random drafter on V = 128: committed tree
    # paths (not only bonus tokens) advance the linear states.
    assert accepted["ddtree", 33] >= 3, accepted
    assert sum(accepted.values()) >= 10, accepted


@functools.cache
def _small_vocab_pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    target = make_hybrid_target(family, seed=2, vocab=16)
    return target, make_drafter(target, seed=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_deep_accepted_paths_small_vocab(family: str) -> None:
    # V = 16 and a 256-node tree: the tree holds the target's path more than one token deep, so
    # multi-node paths are committed into the linear states (paths longer than the conv width
    # are covered by tests/models/test_linear_attention.py's commits).
    target, drafter = _small_vocab_pair(family)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 16, (n,), generator=gen) for n in (70, 12)]
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=256)
    accepted: list[int] = []
    for p in prompts:
        out = dec.generate(p[None], 40)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, p[None], 40))
        accepted += out.stats.accepted_lengths
    batch = dec.generate(prompts, 40)
    for b, p in enumerate(prompts):
        solo = dec.generate(p[None], 40)
        assert torch.equal(_new_tokens(batch, b), solo.sequences[0, p.numel() :]), b
    assert 1 + sum(accepted) / len(accepted) > 1.4, accepted
    assert sum(a >= 2 for a in accepted) >= 3, accepted


# ---------------------------------------------------------------------------------------------
# Stop tokens
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_stop_token_inside_accepted_path(family: str) -> None:
    target, drafter = _small_vocab_pair(family)
    decs = [
        SpeculativeDecoder(target, drafter, p, budget=b)
        for p, b in (("ddtree", 64), ("chain", 7), ("presto", 33))
    ]
    gen = torch.Generator().manual_seed(3)
    hits = 0
    for n in (12, 3, 40, 7, 21, 16):
        prompt = torch.randint(0, 16, (1, n), generator=gen)
        full = decs[0].generate(prompt, 40)
        new = full.sequences[0, n:].tolist()
        where = _round_of_each_token(full.stats.emitted_per_round)
        # A token whose first occurrence sits inside an accepted path (not a round's last).
        cands = [i for i in range(1, len(new)) if new.index(new[i]) == i and not where[i][1]]
        if not cands:
            continue
        stop = new[cands[0]]
        ref = greedy_reference(target, prompt, 40, eos_token_id=stop)
        for dec in decs:
            out = dec.generate(prompt, 40, stop_token_ids=[stop])
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
# ddtree on every family, and every other policy on one of them.
BATCH_POLICIES = {
    "qwen3_next": (("ddtree", 33), ("presto", 33), ("chain", 7), ("auto", 33)),
    "qwen3_5": (("ddtree", 33), ("d2sd", 33), ("ddtree", 5)),
    "qwen3_5_moe": (("ddtree", 33), ("taps", 33), ("caddtree", 33), ("ddtree", 1)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_mixed_lengths_equals_solo_and_hf(family: str) -> None:
    target, _ = hybrid_pair(family)
    lens = (30, 1, 200, 9)
    prompts = [_prompt(n) for n in lens]
    for policy, budget in BATCH_POLICIES[family]:
        out = _decoder(family, policy, budget).generate(prompts, NEW)
        assert out.new_lengths.tolist() == [NEW] * len(lens)
        for b, n in enumerate(lens):
            got = _new_tokens(out, b)
            solo = _solo(family, policy, budget, n)
            assert torch.equal(got, solo.sequences[0, n:]), (policy, budget, b)
            if policy != "auto":  # auto's choices depend on timings
                assert out.request_stats[b].accepted_lengths == solo.stats.accepted_lengths
            assert_greedy_equal(target, torch.cat([prompts[b], got])[None], _reference(family, n))


# ---------------------------------------------------------------------------------------------
# Graph mode (uncaptured) == eager
# ---------------------------------------------------------------------------------------------
GRAPH_POLICIES = {
    "qwen3_next": (("ddtree", 33), ("presto", 33), ("chain", 7)),
    "qwen3_5": (("ddtree", 33), ("d2sd", 33), ("caddtree", 33)),
    "qwen3_5_moe": (("ddtree", 33), ("taps", 33), ("ddtree", 1)),
}


def _graph_decoder(family: str, policy: str, budget: int) -> tuple[SpeculativeDecoder, list[int]]:
    dec = _decoder(family, policy, budget, graphs=True)
    rounds: list[int] = []
    runner: GraphRunner = dec._runner()
    runner.on_round = rounds.append
    return dec, rounds


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_mode_equals_eager(family: str) -> None:
    for policy, budget in GRAPH_POLICIES[family]:
        eager = _decoder(family, policy, budget)
        graph, rounds = _graph_decoder(family, policy, budget)
        for n in (9, 200):
            prompt = _prompt(n)[None]
            got = graph.generate(prompt, NEW)
            want = _solo(family, policy, budget, n)
            assert torch.equal(got.sequences, want.sequences), (policy, n)
            assert got.stats.accepted_lengths == want.stats.accepted_lengths
            kw: dict[str, Any] = dict(temperature=0.9, seed=5)
            got = graph.generate(prompt, NEW, **kw)
            want = eager.generate(prompt, NEW, **kw)
            assert torch.equal(got.sequences, want.sequences), (policy, n, kw)
            assert got.stats.accepted_lengths == want.stats.accepted_lengths
        assert rounds, f"{policy} did not run in graph mode"
        prompts = [_prompt(n) for n in (30, 1, 9)]
        got = graph.generate(prompts, NEW)
        want = eager.generate(prompts, NEW)
        assert torch.equal(got.sequences, want.sequences), policy
        for g, w in zip(got.request_stats, want.request_stats, strict=True):
            assert g.accepted_lengths == w.accepted_lengths


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_round_reads_nothing_on_the_host(family: str) -> None:
    policy, budget = GRAPH_POLICIES[family][0]
    dec, rounds = _graph_decoder(family, policy, budget)
    runner: GraphRunner = dec._runner()
    runner.round_context = forbid_host_sync
    try:
        out = dec.generate(_prompt(30)[None], 6)
    finally:
        runner.round_context = contextlib.nullcontext
    assert rounds, f"{policy} did not run in graph mode"
    assert torch.equal(out.sequences, _solo(family, policy, budget, 30).sequences[:, :36])


def test_graph_warm_up_leaves_the_linear_states_as_they_were() -> None:
    # The warm-up runs rounds for real and restores what they mutate: the linear states are
    # advanced in place by every commit, so they must be among the restored buffers.
    dec, _ = _graph_decoder("qwen3_next", "ddtree", 5)
    runner: GraphRunner = dec._runner()
    dec.generate(_prompt(9)[None], 4)
    rnd = runner._round
    assert rnd is not None
    states = rnd.adapter.cache.linear.tensors()
    assert len(states) == 6  # 3 linear layers x (conv tail, recurrent state)
    before = [t.clone() for t in states]
    assert any(bool(t.abs().sum() > 0) for t in before)
    runner.warmup = 2
    with torch.inference_mode():  # as generate runs it
        runner._warm_up(64, 6)
    for t, b in zip(states, before, strict=True):
        assert torch.equal(t, b)
    names = runner.buffers()
    assert sum(k.startswith("target.linear") for k in names) == 6


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def test_sampling_equals_plain_target_sampling() -> None:
    # A nearly flat V = 16 Qwen3-Next (init 0.1) so trees are accepted often. The requests of a
    # batch draw as solo runs with seeds request_seeds(seed, B) (test_batch.py), so a batch of B
    # copies of the prompt gives B independent samples per call.
    steps, vocab, batch, calls = 3, 16, 100, 20
    with torch.random.fork_rng():
        target = make_hybrid_target("qwen3_next", seed=4, vocab=vocab, init=0.1)
        drafter = make_drafter(target, seed=4)
    prompt = torch.randint(0, vocab, (1, 11), generator=torch.Generator().manual_seed(4))
    probs = exact_joint(target, prompt, steps, temperature=1.0)
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=48)
    counts = torch.zeros(vocab**steps, dtype=torch.float64)
    deep = 0
    for call in range(calls):
        out = dec.generate([prompt[0]] * batch, steps, temperature=1.0, seed=1000 * call)
        for b in range(batch):
            index = 0
            for t in out.sequences[b, -steps:].tolist():
                index = index * vocab + t
            counts[index] += 1
            acc = out.request_stats[b].accepted_lengths
            deep += bool(acc) and acc[0] >= 2
    num = batch * calls
    assert deep > num // 20, deep
    assert chi_square(counts, probs) > 1e-3
    shape = (vocab,) * steps
    for pos in range(steps):
        other = [d for d in range(steps) if d != pos]
        m_counts = counts.reshape(shape).sum(dim=other)
        assert chi_square(m_counts, probs.reshape(shape).sum(dim=other)) > 1e-3


# ---------------------------------------------------------------------------------------------
# The drafters published for these targets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next"])
def test_published_drafter_layout_loads_and_decodes(family: str, tmp_path: Any) -> None:
    # Qwen3.6's DFlash drafters use causal sliding-window layers ([S, S, S, S, F], a window far
    # below the context; Qwen3.5's are all full attention): saved and loaded back through
    # from_pretrained, the layout is kept, the windowed layers draft from rings, and decoding
    # the hybrid target stays lossless.
    from difftree_rt.models import DFlashDrafter

    target, _ = hybrid_pair(family)
    slide, full = "sliding_attention", "full_attention"
    layers = [slide] * 4 + [full]
    made = DFlashDrafter.for_target(
        target,
        num_layers=5,
        block_size=8,
        layer_types=layers,
        sliding_window=6,
        is_causal=True,
        generator=torch.Generator().manual_seed(9),
    )
    made.save_pretrained(tmp_path)
    drafter = DFlashDrafter.from_pretrained(tmp_path).bind(target)
    assert drafter.config.layer_types == layers
    assert [drafter.config.layer_window(i) for i in range(5)] == [6] * 4 + [None]
    assert all(drafter.config.layer_causal(i) for i in range(5))
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16)
    for n in (9, 30):
        out = dec.generate(_prompt(n)[None], NEW)
        assert_greedy_equal(target, out.sequences, _reference(family, n))
    cache = drafter.new_cache(capacity=64)
    assert [r is not None for r in cache.rings] == [True] * 4 + [False]
