"""The round exists once: both launchers drive the same Round step, "ar" is a one-node tree
through it, the engine's one sampler is ops.node_select, and no call state stays on the
decoder."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, trained_pair

from difftree_rt import SpeculativeDecoder, ops
from difftree_rt.engine.round import Round
from difftree_rt.engine.runner import EagerRunner, GraphRunner
from difftree_rt.engine.sampling import request_seeds


def _count_round_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Record every call of the step's phases (and the tree each verify saw)."""
    calls: dict[str, list[Any]] = {"draft": [], "verify": [], "accept": [], "commit": []}
    for name in calls:
        real = getattr(Round, name)

        def spy(self: Round, *args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name].append(args[0] if _name == "verify" else None)
            return _real(self, *args, **kw)

        monkeypatch.setattr(Round, name, spy)
    return calls


@pytest.mark.parametrize("policy", ["ar", "chain", "ddtree"])
def test_eager_and_graph_launch_the_same_step(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target, drafter = trained_pair()
    prompt = torch.tensor([[5, 9, 2, 7]])
    want = greedy_reference(target, prompt, 24)
    runs = {}
    for graph in (False, True):
        dec = SpeculativeDecoder(
            target, drafter if policy != "ar" else None, policy, budget=16, cuda_graphs=graph
        )
        calls = _count_round_calls(monkeypatch)
        out = dec.generate(prompt, 24)
        monkeypatch.undo()
        assert torch.equal(out.sequences, want)
        # Every round is one verify, one accept, one commit of the Round; graph mode may launch
        # one no-op round after the end (its status is read one round late).
        rounds = out.stats.rounds
        assert rounds <= len(calls["verify"]) <= rounds + int(graph)
        assert len(calls["accept"]) == len(calls["commit"]) == len(calls["verify"])
        assert len(calls["draft"]) == (0 if policy == "ar" else len(calls["verify"]))
        if policy == "ar":  # the target alone: a one-node tree through the same verify
            assert all(tree.token.shape == (1, 1) for tree in calls["verify"])
        runs[graph] = out
    assert runs[False].stats.accepted_lengths == runs[True].stats.accepted_lengths


def test_launchers_share_one_round_per_batch_size() -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16, cuda_graphs=True)
    prompt = torch.tensor([[5, 9, 2, 7]])
    plain = dec.generate(prompt, 8).sequences
    graph_round = dec._pool.rounds[1]
    # More stop tokens than graph mode's buffer holds (none of them generated): this call runs
    # on the eager launcher, on the very same round (state, caches) as the graph calls.
    assert isinstance(dec._runner(), GraphRunner) and isinstance(dec._eager, EagerRunner)
    unused = [t for t in range(target.config.vocab_size) if t not in plain[0, 4:].tolist()]
    assert len(unused) > 16
    launched = []
    real = dec._eager._rounds
    dec._eager._rounds = lambda *a: launched.append(1) or real(*a)  # type: ignore[method-assign]
    out = dec.generate(prompt, 8, stop_token_ids=unused)
    assert launched == [1] and dec._pool.rounds[1] is graph_round
    assert torch.equal(out.sequences, plain)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_engine_samples_with_node_select(temperature: float, monkeypatch) -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16)
    seen = []
    real = ops.node_select

    def spy(logits, *args):  # type: ignore[no-untyped-def]
        seen.append(tuple(logits.shape))
        return real(logits, *args)

    monkeypatch.setattr(ops, "node_select", spy)  # engine/sampling.py calls ops.node_select
    out = dec.generate(torch.tensor([[1, 2, 3]]), 20, temperature=temperature, seed=1)
    # The prefill's first token, then one call per round over the whole tree.
    assert len(seen) == out.stats.rounds + 1
    assert seen[0][1] == 1 and all(s[1] == dec.capacity for s in seen[1:])


def test_per_request_top_k_equals_solo_runs() -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16)
    prompts = [torch.tensor([5, 9, 2, 7]), torch.tensor([3, 3, 1])]
    kw: dict[str, Any] = dict(temperature=[1.0, 0.7], top_k=[3, None], top_p=[None, 0.9])
    batch = dec.generate(prompts, 16, seed=4, **kw)
    seeds = request_seeds(4, 2)
    for b, p in enumerate(prompts):
        solo = dec.generate(
            p[None], 16, seed=seeds[b], temperature=kw["temperature"][b], top_k=kw["top_k"][b],
            top_p=kw["top_p"][b],
        )  # fmt: skip
        n = int(batch.new_lengths[b])
        t = batch.sequences.shape[1] - int(batch.new_lengths.max())
        assert torch.equal(batch.sequences[b, t : t + n], solo.sequences[0, p.numel() :]), b


def test_no_call_state_stays_on_the_decoder() -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16, cuda_graphs=True)
    got: list[int] = []

    def streamer(tokens: list[int]) -> None:
        got.extend(tokens)

    out = dec.generate(torch.tensor([[4, 4, 2]]), 12, streamer=streamer, stop_token_ids=[7])
    assert got == out.sequences[0, 3:].tolist()
    holders = [dec, dec._eager, dec._runner(), dec._pool, *dec._pool.rounds.values()]
    for obj in holders:
        for value in vars(obj).values():
            assert value is not streamer
            assert type(value).__name__ not in ("GenerateRequest", "CallStreamer")
