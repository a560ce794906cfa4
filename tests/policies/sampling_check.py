"""The sampling-losslessness check every policy runs through the engine: the joint of the first
``steps`` generated tokens over many seeds vs the target's exact processed distribution
(chi-square, plus each marginal), on a tiny V=16 pair whose drafts are accepted often enough."""

from __future__ import annotations

from collections.abc import Callable

import torch
from engine_helpers import make_drafter, make_target
from test_sampling import chi_square, exact_joint

from difftree_rt import SpeculativeDecoder
from difftree_rt.policies import DraftPolicy


def assert_sampling_lossless(
    make_policy: Callable[[torch.nn.Module], DraftPolicy],
    *,
    temperature: float,
    top_p: float | None = None,
    steps: int = 3,
    vocab: int = 16,
    num: int = 2000,
    min_accepted: int = 2,
    cuda_graphs: bool = False,
    setup: Callable[[SpeculativeDecoder], None] | None = None,
) -> None:
    """``make_policy(target)`` -> the policy under test (it may build its own drafters).

    The check has power only if drafts are actually accepted: at least 1/20 of the runs must
    accept ``min_accepted`` drafts in the first round (narrow trees such as d2sd's rarely
    reach depth 2 on this nearly flat target: they pass 1). ``cuda_graphs``: run the graph-mode
    rounds (uncaptured on CPU); ``setup(decoder)`` adjusts the decoder before the runs.
    """
    target = make_target("llama", vocab=vocab, seed=4, init=0.1)
    drafter = make_drafter(target, seed=4)
    prompt = torch.tensor([[3, 1, 4, 1]])
    probs = exact_joint(target, prompt, steps, temperature=temperature, top_p=top_p)
    dec = SpeculativeDecoder(target, drafter, make_policy(target), cuda_graphs=cuda_graphs)
    if setup is not None:
        setup(dec)
    counts = torch.zeros(vocab**steps, dtype=torch.float64)
    deep = 0
    for seed in range(num):
        out = dec.generate(prompt, steps, temperature=temperature, top_p=top_p, seed=seed)
        index = 0
        for t in out.sequences[0, -steps:].tolist():
            index = index * vocab + t
        counts[index] += 1
        first = out.stats.accepted_lengths[0] if out.stats.accepted_lengths else 0
        deep += first >= min_accepted
    assert deep > num // 20, deep
    assert chi_square(counts, probs) > 1e-3
    shape = (vocab,) * steps
    for pos in range(steps):
        other = [d for d in range(steps) if d != pos]
        assert (
            chi_square(counts.reshape(shape).sum(dim=other), probs.reshape(shape).sum(dim=other))
            > 1e-3
        )
