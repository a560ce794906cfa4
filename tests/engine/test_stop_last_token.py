"""A stop token ends generation wherever it lands in a round, for every policy and round loop.

The stop is chosen from a stop-free run of the same decoder so that its first occurrence is
(a) the round's **last** token (the bonus token the target adds after the accepted path), or
(b) an accepted **draft** token inside the path. With it as ``stop_token_ids`` the output must be
HF greedy's, truncated right after the stop (what ``generate(eos_token_id=stop)`` returns), in
eager and graph mode (uncaptured on CPU), solo and batched; the run ends in the round that
emitted the stop, the rounds before it unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, trained_pair

from difftree_rt import SpeculativeDecoder

POLICIES = ("ar", "chain", "ddtree", "caddtree", "presto", "taps", "d2sd")
NEW = 32
PROMPT_LEN = 5


def _round_of_each_token(emitted_per_round: list[int]) -> list[tuple[int, bool]]:
    """For new token i: (its round, whether it is the round's last); token 0 is the prefill's."""
    out = [(0, True)]
    for r, n in enumerate(emitted_per_round, start=1):
        out += [(r, j == n - 1) for j in range(n)]
    return out


def _stop_candidate(new: list[int], emitted_per_round: list[int], last: bool) -> int | None:
    """Index of the first token of ``new`` whose first occurrence is a round's last token
    (``last``) or a token inside an accepted path (not ``last``); rounds 1.. only, and not the
    final round (which ``max_new_tokens`` may have cut)."""
    where = _round_of_each_token(emitted_per_round)
    final = len(emitted_per_round)
    for i in range(1, len(new)):
        r, is_last = where[i]
        if new.index(new[i]) == i and r < final and is_last == last:
            return i
    return None


def _new_tokens(out: Any, b: int) -> list[int]:
    """Request b's generated tokens (every prompt here has PROMPT_LEN tokens: no padding)."""
    return out.sequences[b, PROMPT_LEN : PROMPT_LEN + int(out.new_lengths[b])].tolist()


@pytest.mark.parametrize("batch", [False, True], ids=["solo", "batch"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("policy", POLICIES)
def test_stop_as_round_last_and_mid_path_token(policy: str, graph: bool, batch: bool) -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, policy, budget=16, cuda_graphs=graph)
    rounds: list[int] = []
    if graph:
        dec._runner().on_round = rounds.append
    gen = torch.Generator().manual_seed(3)
    kinds = (True,) if policy == "ar" else (True, False)  # "ar" accepts no draft tokens
    found: dict[bool, int] = {}
    for _ in range(8):
        prompts = [torch.randint(0, 32, (PROMPT_LEN,), generator=gen) for _ in range(3)]
        prompts = prompts if batch else prompts[:1]
        ids: Any = prompts if batch else prompts[0][None]
        full = dec.generate(ids, NEW)
        new = _new_tokens(full, 0)
        stats = full.request_stats[0]
        cands = {last: _stop_candidate(new, stats.emitted_per_round, last) for last in kinds}
        cands = {k: i for k, i in cands.items() if i is not None and k not in found}
        if not cands:
            continue
        refs = [greedy_reference(target, p[None], NEW)[0, PROMPT_LEN:].tolist() for p in prompts]
        for last, i in cands.items():
            found[last] = i
            stop = new[i]
            out = dec.generate(ids, NEW, stop_token_ids=[stop])
            for b, ref in enumerate(refs):
                want_b = ref[: ref.index(stop) + 1] if stop in ref else ref
                assert _new_tokens(out, b) == want_b, (policy, last, b, stop)
                assert out.request_stats[b].stopped == (stop in ref)
            # Request 0 ends in the round that emitted the stop, right after it; the rounds
            # before are unchanged.
            r = _round_of_each_token(stats.emitted_per_round)[i][0]
            before = stats.emitted_per_round[: r - 1]
            assert out.request_stats[0].emitted_per_round == [*before, i - sum(before)]
        if len(found) == len(kinds):
            break
    assert set(found) == set(kinds), found
    if graph:
        assert rounds, "graph mode did not run"
