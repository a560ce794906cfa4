"""Sampling is lossless in distribution and reproducible (ALGORITHMS.md §3).

The end-to-end check: over many seeds, the first three generated tokens of the speculative
decoder follow exactly the joint distribution of plain target sampling, computed from the
target's probabilities processed by transformers' own warpers (temperature, top-k, top-p).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from engine_helpers import chi2_sf, make_drafter, make_target, trained_pair
from tests.tolerance import Ref
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.sampling import (
    SamplingParams,
    choose,
    process_logits,
    sampling_spec,
    target_probs,
)

P_MIN = 1e-3  # chi-square p-value threshold: seeded, so a pass is deterministic


def hf_probs(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """``[M, V]`` logits -> processed probabilities with transformers' warpers (the oracle)."""
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        procs.append(TopPLogitsWarper(top_p))
    dummy = torch.zeros((logits.shape[0], 1), dtype=torch.long)
    return procs(dummy, logits.clone()).softmax(-1)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of observed ``counts`` against ``probs`` (cells with expected < 5 pooled)."""
    n = counts.sum().item()
    expected = probs * n
    big = expected >= 5
    obs = [*counts[big].tolist(), counts[~big].sum().item()]
    exp = [*expected[big].tolist(), expected[~big].sum().item()]
    if exp[-1] == 0:
        assert obs[-1] == 0, "samples in zero-probability cells"
        obs, exp = obs[:-1], exp[:-1]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    return chi2_sf(stat, len(obs) - 1)


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, None, None), (0.7, None, 0.9), (1.3, 5, None), (0.5, 7, 0.8)]
)
def test_process_logits_matches_transformers(temperature, top_k, top_p) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 50, generator=gen) * 3
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    got = target_probs(logits, params)
    want = hf_probs(logits.reshape(-1, 50), temperature, top_k, top_p).reshape(3, 6, 50)
    assert torch.equal(got == 0, want == 0)  # the same tokens are removed
    # The exact probabilities of the kept tokens: an fp64 softmax over them.
    kept = (logits.double() / temperature).masked_fill(want == 0, float("-inf"))
    Ref(want, kept.softmax(-1)).check(got)
    assert torch.equal(process_logits(logits, params).isinf(), want == 0)


def _choose(logits: torch.Tensor, params: SamplingParams, r: int) -> torch.Tensor:
    """The engine's sampler on ``[B, N, V]`` logits, every request with ``params``, round r."""
    num_b = logits.shape[0]
    spec = sampling_spec([params] * num_b, logits.device)
    return choose(logits, spec, torch.full((num_b,), r, dtype=torch.long))


def test_choose_is_a_pure_function_of_seed_round_node() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 64, 40, generator=gen)
    params = SamplingParams(temperature=1.0, seed=123)
    a = _choose(logits, params, 7)
    assert a.dtype == torch.int64 and a.shape == (1, 64)
    assert torch.equal(a, _choose(logits, params, 7))  # pure
    # Every key component matters.
    assert not torch.equal(a, _choose(logits, SamplingParams(temperature=1.0, seed=124), 7))
    assert not torch.equal(a, _choose(logits, params, 8))
    big = SamplingParams(temperature=1.0, seed=2**40 + 123)  # the high seed word is mixed in
    assert not torch.equal(a, _choose(logits, big, 7))


def test_greedy_ties_go_to_the_lowest_id() -> None:
    logits = torch.tensor([[[0.0, 2.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]]])
    assert _choose(logits, SamplingParams(), 0).tolist() == [[1, 0]]


def test_choose_draws_from_the_processed_distribution() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 1, 12, generator=gen) * 2
    for params in (
        SamplingParams(temperature=0.8, top_p=0.95, seed=99),
        SamplingParams(temperature=1.2, top_k=5, seed=98),
    ):
        probs = target_probs(logits, params)[0, 0]
        draws = torch.stack([_choose(logits, params, r)[0, 0] for r in range(6000)])
        assert chi_square(torch.bincount(draws, minlength=12).double(), probs.double()) > P_MIN
        assert bool((probs[draws] > 0).all())  # never a removed token
        two = _choose(logits.expand(1, 2, 12), params, 3)
        assert two[0, 0] == _choose(logits, params, 3)[0, 0]  # node 0 ignores tree size


def test_top_k_keeps_ties_like_transformers() -> None:
    # transformers' TopKLogitsWarper keeps every token tied with the k-th value.
    logits = torch.tensor([[[3.0, 1.0, 2.0, 2.0, 2.0, 0.5]]])
    params = SamplingParams(temperature=1.0, top_k=2, seed=4)
    want = hf_probs(logits[0], 1.0, top_k=2)[0]
    assert int((want > 0).sum()) == 4
    draws = torch.stack([_choose(logits, params, r)[0, 0] for r in range(4000)])
    assert set(draws.tolist()) == {0, 2, 3, 4}
    assert chi_square(torch.bincount(draws, minlength=6).double(), want.double()) > P_MIN


def test_requests_draw_as_alone() -> None:
    # Request b of a batch draws exactly as a solo call with its own parameters and seed.
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 9, 30, generator=gen)
    rows = [
        SamplingParams(temperature=0.9, top_p=0.8, seed=11),
        SamplingParams(),  # greedy inside a sampled batch
        SamplingParams(temperature=1.5, top_k=4, seed=12),
    ]
    rounds = torch.tensor([2, 5, 7])
    batch = choose(logits, sampling_spec(rows, logits.device), rounds)
    for b, row in enumerate(rows):
        assert torch.equal(batch[b], _choose(logits[b : b + 1], row, int(rounds[b]))[0]), b


def test_every_node_draws_its_own_distribution_independently() -> None:
    # Nodes 0 and 1 share one distribution (a shared or correlated uniform would show as a
    # diagonal joint), nodes 2..4 have their own. Per node: chi-square against its processed
    # distribution; per pair: the joint counts against the product of the two (independence).
    num_n, vocab, rounds = 5, 10, 4000
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, num_n, vocab, generator=gen) * 1.5
    logits[0, 1] = logits[0, 0]
    params = SamplingParams(temperature=0.9, seed=17)
    probs = target_probs(logits, params)[0].double()  # [N, V]
    draws = torch.cat([_choose(logits, params, r) for r in range(rounds)])  # [R, N]
    for n in range(num_n):
        counts = torch.bincount(draws[:, n], minlength=vocab).double()
        assert chi_square(counts, probs[n]) > P_MIN, n
    for i, j in itertools.combinations(range(num_n), 2):
        joint = torch.bincount(draws[:, i] * vocab + draws[:, j], minlength=vocab**2).double()
        assert chi_square(joint, torch.outer(probs[i], probs[j]).reshape(-1)) > P_MIN, (i, j)
    # A node's draw is keyed by its index: a smaller tree draws the same at its nodes.
    head = torch.cat([_choose(logits[:, :3], params, r) for r in range(50)])
    assert torch.equal(head, draws[:50, :3])


def test_sampling_params_validation() -> None:
    for bad in (
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(top_k=0),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(seed=-1),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad).validate()


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["ar", "chain", "ddtree"])
def test_reproducible_under_a_seed(policy: str) -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, policy, budget=16)
    prompt = torch.tensor([[5, 9, 2]])
    kw = dict(temperature=0.9, top_k=20, top_p=0.95)
    a = dec.generate(prompt, 24, seed=7, **kw).sequences
    b = dec.generate(prompt, 24, seed=7, **kw).sequences
    assert torch.equal(a, b)
    others = {tuple(dec.generate(prompt, 24, seed=s, **kw).sequences[0].tolist()) for s in range(5)}
    assert len(others) >= 3
    torch.manual_seed(0)
    c = dec.generate(prompt, 24, **kw).sequences  # seed=None: from torch's global generator
    torch.manual_seed(0)
    assert torch.equal(c, dec.generate(prompt, 24, **kw).sequences)


def test_first_token_draw_is_shared_by_all_policies() -> None:
    # The prefill's draw is keyed (seed, round 0, node 0) whatever the policy.
    target, drafter = trained_pair()
    prompt = torch.tensor([[1, 2]])
    firsts = {
        SpeculativeDecoder(target, drafter, p, budget=8)
        .generate(prompt, 1, temperature=1.0, seed=3)
        .sequences[0, -1]
        .item()
        for p in ("ar", "chain", "ddtree")
    }
    assert len(firsts) == 1


@torch.no_grad()
def exact_joint(model, prompt: torch.Tensor, steps: int, **proc) -> torch.Tensor:
    """Joint probability ``[V] * steps`` of the first ``steps`` tokens under plain sampling."""
    vocab = model.config.vocab_size
    joint = torch.ones(())
    for t in range(steps):
        prefixes = list(itertools.product(range(vocab), repeat=t))
        seqs = torch.cat(
            [
                prompt.expand(len(prefixes), -1),
                torch.tensor(prefixes, dtype=torch.long).reshape(len(prefixes), t),
            ],
            dim=1,
        )
        cond = hf_probs(model(seqs).logits[:, -1].double(), **proc)  # [V^t, V]
        joint = joint.reshape(-1, 1) * cond
    return joint.reshape(-1)


@pytest.mark.parametrize(
    "policy,budget,temperature,top_p,num",
    [
        ("ddtree", 48, 1.0, None, 3000),
        ("ddtree", 48, 0.7, 0.9, 3000),
        ("chain", 7, 1.0, None, 1500),
    ],
)
def test_distribution_equals_plain_target_sampling(policy, budget, temperature, top_p, num) -> None:
    steps, vocab = 3, 16
    target = make_target("llama", vocab=vocab, seed=4, init=0.1)
    drafter = make_drafter(target, seed=4)
    prompt = torch.tensor([[3, 1, 4, 1]])
    probs = exact_joint(target, prompt, steps, temperature=temperature, top_p=top_p)
    dec = SpeculativeDecoder(target, drafter, policy, budget=budget)
    counts = torch.zeros(vocab**steps, dtype=torch.float64)
    deep = 0
    for seed in range(num):
        out = dec.generate(prompt, steps, temperature=temperature, top_p=top_p, seed=seed)
        t1, t2, t3 = out.sequences[0, -steps:].tolist()
        counts[(t1 * vocab + t2) * vocab + t3] += 1
        deep += bool(out.stats.accepted_lengths) and out.stats.accepted_lengths[0] >= 2
    if policy == "ddtree":
        # Tokens 2 and 3 often both come from accepted tree nodes: the walk is exercised.
        assert deep > num // 20
    assert chi_square(counts, probs) > P_MIN
    for pos in range(steps):  # marginals too (more power per position)
        shape = (vocab,) * steps
        m_counts = counts.reshape(shape).sum(dim=[d for d in range(steps) if d != pos])
        m_probs = probs.reshape(shape).sum(dim=[d for d in range(steps) if d != pos])
        assert chi_square(m_counts, m_probs) > P_MIN
