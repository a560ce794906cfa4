"""Batched generation (B > 1, eager path): every request gets exactly its solo output.

Greedy: each request's tokens equal the decoder's solo run and HF greedy (fp32, token for
token), for every policy that runs on a batch, budgets 1/7/64, prompts of 1..23 tokens, left
padding given as a list or as ``attention_mask``. Sampling: request b draws exactly as a solo
run with seed ``request_seeds(seed, B)[b]`` (so each request has the target's distribution,
tested in test_sampling.py for the solo path). Stop tokens end one request while the others
continue; ``max_new_tokens`` ends mid-round.
"""

from __future__ import annotations

import pytest
import torch
from draft_reference import chain_acceptance
from engine_helpers import greedy_reference, random_pair, trained_pair
from test_greedy import assert_greedy_equal

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine import request_seeds
from difftree_rt.engine.stats import GenerationStats
from difftree_rt.models import TargetAdapter

POLICIES = ("ar", "chain", "ddtree", "caddtree", "presto", "taps", "d2sd")
BUDGETS = (1, 7, 64)
PROMPT_LENS = (1, 23, 6, 14)
NEW = 20


def _prompts(vocab: int, lens: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen) for n in lens]


def _left_pad(prompts: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), t), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), t), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, t - p.numel() :] = p
        mask[b, t - p.numel() :] = 1
    return ids, mask


def _new_tokens(out, b: int) -> torch.Tensor:
    """Request b's generated tokens (no padding)."""
    t = out.sequences.shape[1] - int(out.new_lengths.max())
    return out.sequences[b, t : t + int(out.new_lengths[b])]


def _check_against_solo(
    dec: SpeculativeDecoder, prompts, out, new: int, **kw
) -> list[GenerationStats]:
    """Every request of ``out`` equals its solo run; returns the solo runs' stats."""
    solos = []
    for b, p in enumerate(prompts):
        solo = dec.generate(p[None], new, **kw)
        solos.append(solo.stats)
        assert torch.equal(_new_tokens(out, b), solo.sequences[0, p.numel() :]), (
            dec.policy_name,
            dec.budget,
            b,
        )
        rs = out.request_stats[b]
        assert rs.accepted_lengths == solo.stats.accepted_lengths
        assert rs.new_tokens == solo.stats.new_tokens and rs.stopped == solo.stats.stopped
    return solos


def _pooled_tau(runs: list[GenerationStats]) -> float:
    """τ of several runs together: 1 + accepted tokens / rounds over all of them."""
    accepted = [a for r in runs for a in r.accepted_lengths]
    return 1 + sum(accepted) / len(accepted)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("policy", POLICIES)
def test_batch_greedy_equals_solo_and_hf(arch: str, policy: str) -> None:
    target, drafter = random_pair(arch)
    prompts = _prompts(128, PROMPT_LENS, seed=11)
    refs = [greedy_reference(target, p[None], NEW)[0, p.numel() :] for p in prompts]
    for budget in BUDGETS if policy != "ar" else (1,):
        dec = SpeculativeDecoder(target, None if policy == "ar" else drafter, policy, budget=budget)
        out = dec.generate(prompts, NEW)
        t = max(PROMPT_LENS)
        assert out.sequences.shape == (len(prompts), t + NEW)
        assert out.prompt_lengths.tolist() == list(PROMPT_LENS)
        assert out.new_lengths.tolist() == [NEW] * len(prompts)
        for b, (p, ref) in enumerate(zip(prompts, refs)):
            assert torch.equal(out.sequences[b, t - p.numel() : t], p)
            got = _new_tokens(out, b)
            assert_greedy_equal(target, torch.cat([p, got])[None], torch.cat([p, ref])[None])
        solos = _check_against_solo(dec, prompts, out, NEW)
        s = out.stats
        assert s.batch_size == len(prompts) and s.new_tokens == NEW * len(prompts)
        assert s.batch_rounds == max(r.rounds for r in solos)
        assert s.rounds == sum(r.rounds for r in solos)
        assert s.tau == pytest.approx(_pooled_tau(solos))  # the solo runs' τ, pooled


# τ of test_batch_trained_pair_mid_round_end measured (fp32, CPU); checked at 0.9 x.
MID_ROUND_TAU = {
    ("chain", 7): 1.507,
    ("ddtree", 7): 2.075,
    ("ddtree", 64): 2.895,
    ("presto", 64): 2.846,
    ("d2sd", 64): 1.774,
}


@pytest.mark.parametrize("policy,budget", list(MID_ROUND_TAU))
def test_batch_trained_pair_mid_round_end(policy: str, budget: int) -> None:
    # Realistic acceptance: deep paths, so max_new_tokens (37) ends inside a round's path.
    target, drafter = trained_pair()
    prompts = _prompts(32, (3, 17, 9), seed=5)
    dec = SpeculativeDecoder(target, drafter, policy, budget=budget)
    out = dec.generate(prompts, 37)
    assert out.new_lengths.tolist() == [37, 37, 37]
    for b, p in enumerate(prompts):
        ref = greedy_reference(target, p[None], 37)
        assert_greedy_equal(target, torch.cat([p, _new_tokens(out, b)])[None], ref)
    _check_against_solo(dec, prompts, out, 37)
    assert out.stats.tau >= 0.9 * MID_ROUND_TAU[policy, budget]
    assert max(out.stats.accepted_lengths) >= 3
    if policy == "chain":  # exact: an independent replay of chain decoding's acceptance
        for b, p in enumerate(prompts):
            seq = torch.cat([p, _new_tokens(out, b)])
            want, decided = chain_acceptance(target, drafter, seq, p.numel(), budget)
            assert decided >= len(want) // 2, (decided, len(want))
            assert out.request_stats[b].accepted_lengths[:decided] == want[:decided]


@pytest.mark.parametrize("policy", ["ar", "chain", "ddtree", "presto", "taps"])
def test_stop_token_ends_one_request_early(policy: str) -> None:
    target, drafter = trained_pair()
    prompts = _prompts(32, (3, 17, 9), seed=5)
    dec = SpeculativeDecoder(target, None if policy == "ar" else drafter, policy, budget=16)
    free = [dec.generate(p[None], 30).sequences[0, p.numel() :].tolist() for p in prompts]
    # A token request 0 emits early that another request never emits: that one runs to the end.
    stop = next(
        t for t in free[0][2:] if any(t not in other for other in free[1:]) and t not in free[0][:2]
    )
    out = dec.generate(prompts, 30, stop_token_ids=[stop], pad_token_id=31)
    lens = out.new_lengths.tolist()
    assert lens[0] == free[0].index(stop) + 1 < 30
    assert max(lens) == 30 and out.sequences.shape[1] == 17 + 30
    assert out.request_stats[0].stopped and not out.stats.stopped
    for b in range(3):
        new = out.sequences[b, 17:]
        assert (new[lens[b] :] == 31).all()  # padded with pad_token_id after the stop
    _check_against_solo(dec, prompts, out, 30, stop_token_ids=[stop])


@pytest.mark.parametrize("policy", POLICIES)
def test_batch_sampling_equals_solo_with_derived_seeds(policy: str) -> None:
    # The per-request draws are the solo run's keyed draws with seed request_seeds(seed, B)[b]:
    # every request is distributed exactly as a solo sampled run (test_sampling.py).
    target, drafter = trained_pair()
    prompts = _prompts(32, (3, 17, 9, 1), seed=7)
    dec = SpeculativeDecoder(target, None if policy == "ar" else drafter, policy, budget=16)
    kw = dict(temperature=0.9, top_k=20, top_p=0.95)
    out = dec.generate(prompts, 24, seed=123, **kw)
    again = dec.generate(prompts, 24, seed=123, **kw)
    assert torch.equal(out.sequences, again.sequences)  # reproducible
    seeds = request_seeds(123, len(prompts))
    assert seeds[0] == 123 and len(set(seeds)) == len(seeds)
    for b, p in enumerate(prompts):
        solo = dec.generate(p[None], 24, seed=seeds[b], **kw)
        assert torch.equal(_new_tokens(out, b), solo.sequences[0, p.numel() :]), (policy, b)
    # Explicit per-request seeds.
    explicit = dec.generate(prompts, 24, seed=seeds, **kw)
    assert torch.equal(explicit.sequences, out.sequences)
    swapped = dec.generate(prompts[::-1], 24, seed=seeds[::-1], **kw)
    for b in range(len(prompts)):
        assert torch.equal(_new_tokens(swapped, len(prompts) - 1 - b), _new_tokens(out, b))


def test_attention_mask_form_equals_list_form_and_b1_equals_solo() -> None:
    target, drafter = random_pair("qwen3")
    prompts = _prompts(128, (5, 2, 9), seed=3)
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=7)
    ids, mask = _left_pad(prompts, pad=7)
    by_mask = dec.generate(ids, NEW, attention_mask=mask)
    by_list = dec.generate(prompts, NEW, pad_token_id=7)
    assert torch.equal(by_mask.sequences, by_list.sequences)
    assert torch.equal(by_mask.sequences[:, :9], ids)  # the prompt rows as given
    # B = 1 through every form of the batch API = the solo path (tokens and stats).
    p = prompts[0]
    solo = dec.generate(p[None], NEW)
    for out in (
        dec.generate([p], NEW),
        dec.generate(p[None], NEW, attention_mask=torch.ones(1, 5, dtype=torch.long)),
    ):
        assert torch.equal(out.sequences, solo.sequences)
        assert out.stats.accepted_lengths == solo.stats.accepted_lengths
        assert out.new_lengths.tolist() == [NEW] and out.prompt_lengths.tolist() == [5]
    padded = dec.generate(
        ids[2:3].clone().fill_(3).index_copy_(1, torch.arange(4, 9), p[None]),
        NEW,
        attention_mask=torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1]]),
    )
    assert torch.equal(padded.sequences[:, 9:], solo.sequences[:, 5:])
    assert padded.prompt_lengths.tolist() == [5]
    # Same-length batch without a mask.
    same = torch.stack([prompts[0], prompts[0].flip(0)])
    out = dec.generate(same, NEW)
    assert torch.equal(out.sequences[0], solo.sequences[0])


def test_fixed_adapter_max_length_and_graph_fallback() -> None:
    target, drafter = random_pair("llama")
    prompts = _prompts(128, (4, 11), seed=9)
    adapter = TargetAdapter(
        target, max_length=64, batch_size=2, feature_layers=drafter.config.target_layer_ids
    )
    ref = SpeculativeDecoder(target, drafter, "ddtree", budget=7).generate(prompts, NEW)
    dec = SpeculativeDecoder(adapter, drafter, "ddtree", budget=7)
    assert torch.equal(dec.generate(prompts, NEW).sequences, ref.sequences)
    with pytest.raises(ValueError, match="batch_size=2"):
        dec.generate(prompts[0][None], NEW)
    # A fixed max_length, and graph mode (its batch bucket runs the same rounds).
    for kw in (dict(max_length=48), dict(cuda_graphs=True)):
        d = SpeculativeDecoder(target, drafter, "ddtree", budget=7, **kw)
        assert torch.equal(d.generate(prompts, NEW).sequences, ref.sequences)
    with pytest.raises(ValueError, match="max_length"):
        SpeculativeDecoder(target, drafter, "ddtree", budget=7, max_length=30).generate(
            prompts, NEW
        )


def test_max_new_one_and_first_token_stop() -> None:
    target, drafter = random_pair("qwen3")
    prompts = _prompts(128, (3, 8), seed=4)
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=7)
    out = dec.generate(prompts, 1)
    assert out.new_lengths.tolist() == [1, 1] and out.stats.batch_rounds == 0
    first = [int(dec.generate(p[None], 1).sequences[0, -1]) for p in prompts]
    out = dec.generate(prompts, 12, stop_token_ids=[first[1]], pad_token_id=0)
    assert out.new_lengths.tolist()[1] == 1 and out.request_stats[1].stopped
    _check_against_solo(dec, prompts, out, 12, stop_token_ids=[first[1]])


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        (
            ([torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], 4),
            {},
            ValueError,
            r"input_ids\[1\] is empty",
        ),
        (([torch.tensor([1, 2]), torch.tensor([1.0])], 4), {}, ValueError, r"input_ids\[1\]"),
        (([], 4), {}, ValueError, "input_ids"),
        (
            (torch.tensor([[1, 2], [3, 4]]), 4),
            dict(attention_mask=torch.ones(2, 3)),
            ValueError,
            "attention_mask must have the shape",
        ),
        (
            (torch.tensor([[1, 2], [3, 4]]), 4),
            dict(attention_mask=torch.tensor([[1, 1], [1, 0]])),
            ValueError,
            "attention_mask.*left-padded",
        ),
        (
            (torch.tensor([[1, 2, 3], [3, 4, 5]]), 4),
            dict(attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]])),
            ValueError,
            "attention_mask.*empty prompt",
        ),
        (
            (torch.tensor([[1, 2], [3, 4]]), 4),
            dict(attention_mask=torch.tensor([[1, 1], [0, 2]])),
            ValueError,
            "attention_mask",
        ),
        (
            ([torch.tensor([1, 2]), torch.tensor([3])], 4),
            dict(attention_mask=torch.ones(2, 2)),
            ValueError,
            "attention_mask must be None",
        ),
        (([torch.tensor([1, 2]), torch.tensor([3])], 4), dict(seed=[1, 2, 3]), ValueError, "seed"),
        (([torch.tensor([1, 2]), torch.tensor([3])], 4), dict(seed=-1), ValueError, "seed"),
        (([torch.tensor([1, 2]), torch.tensor([300])], 4), {}, ValueError, "input_ids"),
        (
            ([torch.tensor([1, 2]), torch.tensor([3])], 4),
            dict(pad_token_id=1.5),
            ValueError,
            "pad_token_id",
        ),
    ],
)
def test_batch_errors(args, kwargs, exc, match) -> None:
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=8)
    with pytest.raises(exc, match=match):
        dec.generate(*args, **kwargs)


def test_presto_batch_tables_are_per_request() -> None:
    # One n-gram table per request, over its own stream: every request's trees (its accepted
    # lengths, round by round) and tokens are its solo ones, while a table shared by the batch
    # would change the trees. After the call each table holds exactly its request's stream.
    from difftree_rt.policies import NGramPrior, PrestoPolicy

    target, drafter = trained_pair()
    prompts = _prompts(32, (3, 17, 9), seed=5)
    policy = PrestoPolicy(16, lam=1.0)
    seen: list = []
    extend = policy.extend_stream
    policy.extend_stream = lambda st, t, c: (seen.append(st), extend(st, t, c))[1]  # type: ignore[method-assign]
    dec = SpeculativeDecoder(target, drafter, policy)
    out = dec.generate(prompts, 30)
    stream = seen[-1]
    assert stream.keys.shape[0] == 3 and int(stream.overflow.sum()) == 0
    for b, p in enumerate(prompts):
        toks = torch.cat([p, _new_tokens(out, b)]).tolist()
        want = NGramPrior(policy.order)
        want.sync(toks)
        got = sorted(zip(stream.keys[b][stream.keys[b] != 0].tolist(),
                         stream.counts[b][stream.keys[b] != 0].tolist()))  # fmt: skip
        assert got == sorted(zip(want.keys[want.keys != 0].tolist(),
                                 want.counts[want.keys != 0].tolist()))  # fmt: skip
        assert stream.history[b].tolist() == toks[-(policy.order - 1) :]
    _check_against_solo(dec, prompts, out, 30)
    assert out.stats.tau >= 0.9 * 2.308  # measured (fp32, CPU)


def test_needs_context_policy_without_batch_context_refuses_a_batch() -> None:
    from difftree_rt.policies import DDTreePolicy, PolicyNeeds

    class StreamPolicy(DDTreePolicy):
        name = "stream"
        needs = PolicyNeeds(graph_safe=True, needs_context=True)  # no batch_context

    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, StreamPolicy(8))
    with pytest.raises(NotImplementedError, match="stream"):
        dec.generate([torch.tensor([1, 2]), torch.tensor([3])], 4)
    dec.generate(torch.tensor([[1, 2]]), 4)  # B = 1 still runs


def test_d2sd_with_vp_drafter_batch() -> None:
    # The second-pass drafter keeps its own ragged context cache (append with num_new).
    from engine_helpers import make_drafter

    from difftree_rt.policies import D2SDPolicy

    target, drafter = random_pair("qwen3")
    vp = make_drafter(target, seed=2)
    prompts = _prompts(128, (2, 13, 7), seed=8)
    dec = SpeculativeDecoder(target, drafter, D2SDPolicy(budget=16, k=3, vp_drafter=vp))
    out = dec.generate(prompts, NEW)
    for b, p in enumerate(prompts):
        ref = greedy_reference(target, p[None], NEW)
        assert_greedy_equal(target, torch.cat([p, _new_tokens(out, b)])[None], ref)
    _check_against_solo(dec, prompts, out, NEW)


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("policy", ["ar", "ddtree", "presto"])
def test_batch_streamer_gets_each_requests_tokens_in_order(graphs: bool, policy: str) -> None:
    # streamer(b, tokens): request b's pieces, in order, concatenate to exactly its output, one
    # piece for the first token and at most one per round; a request that stopped early gets
    # nothing after its stop token.
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(
        target, None if policy == "ar" else drafter, policy, budget=16, cuda_graphs=graphs
    )
    prompts = _prompts(32, (3, 17, 9), seed=8)
    pieces: dict[int, list[list[int]]] = {0: [], 1: [], 2: []}
    out = dec.generate(
        prompts, [40, 7, 25], stop_token_ids=[5], streamer=lambda b, t: pieces[b].append(t)
    )
    for b in range(3):
        assert [t for p in pieces[b] for t in p] == _new_tokens(out, b).tolist(), b
        assert all(p for p in pieces[b]) and len(pieces[b]) <= out.request_stats[b].rounds + 1
        assert pieces[b][0] == [int(_new_tokens(out, b)[0])]
    # The solo streamer keeps its one-argument form.
    solo: list[list[int]] = []
    one = dec.generate(prompts[1][None], 7, stop_token_ids=[5], streamer=solo.append)
    assert [t for p in solo for t in p] == one.sequences[0, 17:].tolist()
