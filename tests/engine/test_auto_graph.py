"""``policy="auto"`` in graph mode (the GraphRunner's round functions, uncaptured on CPU): each
mode is its own pair of round functions (a target step, or a tree of one size bucket), chosen
one round late from measured round times.

- a forced sequence of choices gives the eager launcher's tokens and accepted lengths, greedy
  and sampled, solo and batched, on two architectures and a hybrid target;
- unforced: greedy == HF, ``stats.modes`` reports the rounds per mode;
- the round reads nothing on the host;
- with deterministic synthetic round costs, a random drafter ends in target steps.

Vocabulary: B batch, N tree size (root included; 1 = a plain target step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, random_pair, trained_pair
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.auto import AutoController
from difftree_rt.engine.auto_runner import AutoGraphRunner, AutoRunner
from difftree_rt.engine.runner import forbid_host_sync

#: A fixed sequence of choices over the buckets of budget 32 (N = 5, 9, 17, 33).
CYCLE = (1, 5, 33, 1, 9, 33, 1, 1, 17, 33, 5)


def _graph(dec: SpeculativeDecoder) -> AutoGraphRunner:
    runner = dec._runner()
    assert isinstance(runner, AutoGraphRunner)
    return runner


def _force(runner: AutoRunner | AutoGraphRunner, batch_size: int = 1) -> list[int]:
    """Make the runner's controller of batch size B follow :data:`CYCLE` from each call's start;
    returns the log of the modes it was asked for."""
    ctrl = runner.controller(batch_size)
    step = {"i": 0}
    log: list[int] = []

    def mode() -> int:
        return CYCLE[step["i"] % len(CYCLE)]

    def choose_draft(context: int) -> bool:
        if mode() == 1:  # a drafted round advances in choose_nodes
            log.append(1)
            step["i"] += 1
            return False
        return True

    def choose_nodes(context: int, predicted: Sequence[float | None]) -> int:
        n = mode()
        log.append(n)
        step["i"] += 1
        return n

    ctrl.choose_draft = choose_draft  # type: ignore[method-assign]
    ctrl.choose_nodes = choose_nodes  # type: ignore[method-assign]
    generate = runner.generate

    def restart(*args: Any, **kwargs: Any) -> Any:
        step["i"] = 0
        log.clear()
        return generate(*args, **kwargs)

    runner.generate = restart  # type: ignore[method-assign]
    return log


def _pair(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    if arch == "hybrid":
        from hybrid_targets import hybrid_pair

        return hybrid_pair("qwen3_next")
    return trained_pair() if arch == "trained" else random_pair(arch)


@pytest.mark.parametrize("arch", ["qwen3", "llama", "trained", "hybrid"])
def test_forced_choices_graph_equals_eager(arch: str) -> None:
    target, drafter = _pair(arch)
    vocab = int(target.config.vocab_size)
    eager = SpeculativeDecoder(target, drafter, "auto", budget=32)
    graph = SpeculativeDecoder(target, drafter, "auto", budget=32, cuda_graphs=True)
    assert isinstance(eager._eager, AutoRunner)
    log_e, log_g = _force(eager._eager), _force(_graph(graph))
    gen = torch.Generator().manual_seed(4)
    for n in (1, 9, 23):
        prompt = torch.randint(0, vocab, (1, n), generator=gen)
        for kw in ({}, {"temperature": 0.9, "seed": 3}):
            want = eager.generate(prompt, 30, **kw)
            got = graph.generate(prompt, 30, **kw)
            assert torch.equal(got.sequences, want.sequences), (n, kw)
            assert got.stats.accepted_lengths == want.stats.accepted_lengths, (n, kw)
            rounds = want.stats.rounds
            assert log_e == [CYCLE[i % len(CYCLE)] for i in range(rounds)]
            # Graph mode launches one round past the end (a no-op) before it reads "done".
            assert log_g[:rounds] == log_e
            if not kw:
                ref = greedy_reference(target, prompt, 30)
                assert_greedy_equal(target, got.sequences, ref)


def test_forced_choices_batch_graph_equals_eager() -> None:
    target, drafter = trained_pair()
    eager = SpeculativeDecoder(target, drafter, "auto", budget=32)
    graph = SpeculativeDecoder(target, drafter, "auto", budget=32, cuda_graphs=True)
    _force(eager._eager, batch_size=3)
    _force(_graph(graph), batch_size=3)
    gen = torch.Generator().manual_seed(5)
    vocab = int(target.config.vocab_size)
    prompts = [torch.randint(0, vocab, (n,), generator=gen) for n in (7, 1, 19)]
    want = eager.generate(prompts, 25)
    got = graph.generate(prompts, 25)
    assert torch.equal(got.sequences, want.sequences)
    for g, w in zip(got.request_stats, want.request_stats, strict=True):
        assert g.accepted_lengths == w.accepted_lengths


@pytest.mark.parametrize("arch", ["qwen3", "trained"])
def test_unforced_greedy_equals_hf_and_reports_modes(arch: str) -> None:
    target, drafter = _pair(arch)
    dec = SpeculativeDecoder(target, drafter, "auto", budget=32, cuda_graphs=True)
    gen = torch.Generator().manual_seed(6)
    vocab = int(target.config.vocab_size)
    for n in (3, 17):
        prompt = torch.randint(0, vocab, (1, n), generator=gen)
        out = dec.generate(prompt, 40)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 40))
        modes = out.stats.modes
        assert set(modes) <= {1, 5, 9, 17, 33} and all(v > 0 for v in modes.values())
        # Every round the device ran (incl. the no-op launched after the end) has a mode.
        assert sum(modes.values()) >= out.stats.rounds
    prompts = [torch.randint(0, vocab, (n,), generator=gen) for n in (4, 12)]
    out = dec.generate(prompts, 20)
    for b, p in enumerate(prompts):
        ref = greedy_reference(target, p[None], 20)
        got = out.sequences[b, out.sequences.shape[1] - 20 :]
        assert torch.equal(got, ref[0, p.numel() :]), b


def test_graph_round_reads_nothing_on_the_host() -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "auto", budget=32, cuda_graphs=True)
    runner = _graph(dec)
    _force(runner)
    runner.round_context = forbid_host_sync
    try:
        out = dec.generate(torch.tensor([[3, 1, 4, 1, 5]]), 20)
    finally:
        runner.round_context = contextlib.nullcontext
    assert set(out.stats.modes) == {1, 5, 9, 17, 33}


def test_synthetic_costs_random_drafter_ends_in_target_steps() -> None:
    # Deterministic costs (a drafted round of N nodes costs 2 + N/16 steps): a random drafter's
    # trees are never accepted, so drafting cannot pay and the controller settles on steps.
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "auto", budget=32, cuda_graphs=True)
    runner = _graph(dec)
    observe = AutoController.observe
    ctrl = runner.controller(1)

    def synthetic(nodes, context, seconds, accepted, predicted=None):  # type: ignore[no-untyped-def]
        cost = 1e-3 if nodes == 1 else 1e-3 * (2 + nodes / 16)
        observe(ctrl, nodes, context, cost, accepted, predicted)

    ctrl.observe = synthetic  # type: ignore[method-assign]
    out = dec.generate(torch.tensor([[5, 6, 7]]), 120)
    modes = out.stats.modes
    drafted = sum(v for n, v in modes.items() if n > 1)
    assert modes.get(1, 0) > 3 * drafted, modes
    assert ctrl.drafting is False
