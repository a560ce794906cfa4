"""taps through the engine: lossless greedy (identical tokens to HF greedy), lossless sampling
(chi-square of the first tokens' joint), and the marginal scorer reproducing DDTree's run."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy_reference, random_pair, trained_pair
from sampling_check import assert_sampling_lossless
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.policies import TapsPolicy, make_policy


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_greedy_lossless_random_pair(budget: int) -> None:
    target, drafter = random_pair("qwen3")
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128, (1, n), generator=gen) for n in (1, 9, 23)]
    refs = [greedy_reference(target, p, 24) for p in prompts]
    for policy in [
        make_policy("taps", budget),
        TapsPolicy(budget, width=2, pool_size=3 * budget),
        TapsPolicy(budget, scorer="marginal"),
    ]:
        dec = SpeculativeDecoder(target, drafter, policy)
        for prompt, ref in zip(prompts, refs):
            out = dec.generate(prompt, 24)
            assert_greedy_equal(target, out.sequences, ref)
            assert sum(out.stats.emitted_per_round) + 1 == 24


def test_greedy_trained_pair_marginal_scorer_is_ddtree() -> None:
    target, drafter = trained_pair()
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 32, (1, n), generator=gen) for n in (3, 9, 17)]
    refs = [greedy_reference(target, p, 48) for p in prompts]
    stats: dict[str, list] = {}
    for name, policy in [
        ("ddtree", make_policy("ddtree", 64)),
        ("taps-marginal", TapsPolicy(64, scorer="marginal")),
        ("taps", TapsPolicy(64)),
    ]:
        dec = SpeculativeDecoder(target, drafter, policy)
        for prompt, ref in zip(prompts, refs):
            out = dec.generate(prompt, 48)
            assert_greedy_equal(target, out.sequences, ref)
            stats.setdefault(name, []).append(list(out.stats.accepted_lengths))
    assert stats["taps-marginal"] == stats["ddtree"]  # same trees every round
    taus = {k: sum(map(sum, v)) / sum(map(len, v)) + 1 for k, v in stats.items()}
    assert taus["taps"] >= 0.9 * 3.6, taus  # 0.9 x the τ measured (fp32, CPU)


def test_sampling_distribution_equals_target() -> None:
    assert_sampling_lossless(lambda _: TapsPolicy(48, width=8), temperature=0.7, top_p=0.9)
