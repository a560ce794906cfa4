"""``policy="auto"`` end to end: every round is a plain target step or a tree of one of the
policy's size buckets, so the output is the target's whatever the choices.

Greedy == HF ``generate`` (two architectures, random and trained pairs, ``tree="presto"``,
several calls on one decoder), a forced sequence of choices (the modes follow it, a drafted
round after target steps accepts exactly what a fresh decoder accepts from the same prefix: the
drafter's context caught up), batches, stop tokens, χ² of sampled output, ``stats.modes``, the
choices from measured costs (real timings, and deterministic ones with synthetic round costs),
and the errors.

Vocabulary: B batch, N tree size (root included; 1 = a plain target step), V vocabulary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import torch
from engine_helpers import (
    greedy_reference,
    make_drafter,
    make_target,
    random_pair,
    trained_pair,
)
from test_batch import _check_against_solo, _new_tokens, _prompts
from test_greedy import _round_of_each_token, assert_greedy_equal
from test_sampling import P_MIN, chi_square, exact_joint

from difftree_rt import SpeculativeDecoder
from difftree_rt.engine.auto import AutoController
from difftree_rt.engine.auto_runner import AutoRunner
from difftree_rt.policies import NGramPrior
from difftree_rt.policies.auto import AutoPolicy

ARCHS = ("qwen3", "llama")
PROMPT_LENS = (1, 6, 23)
NEW = 24
#: A fixed sequence of choices over the buckets of budget 64 (N = 5, 9, 17, 33, 65).
CYCLE = (1, 5, 33, 1, 9, 65, 1, 1, 17, 65, 33)


def _runner(dec: SpeculativeDecoder) -> AutoRunner:
    runner = dec._eager
    assert isinstance(runner, AutoRunner)
    return runner


def _force(
    dec: SpeculativeDecoder, cycle: Sequence[int], batch_size: int = 1, per_call: bool = True
) -> list[tuple[int, int]]:
    """Make the controller of batch size B follow ``cycle`` (1: a target step, else the
    bucket N), restarting it every call when ``per_call``; returns the log of
    ``(N, context)`` of the rounds run, in order (as the runner reports them)."""
    runner = _runner(dec)
    ctrl = runner.controller(batch_size)
    step = {"i": 0, "calls": 0}
    log: list[tuple[int, int]] = []
    observe = ctrl.observe

    def choose_draft(context: int) -> bool:
        return cycle[step["i"] % len(cycle)] != 1

    def choose_nodes(context: int, predicted: Sequence[float | None]) -> int:
        assert len(predicted) == len(runner.buckets)
        return cycle[step["i"] % len(cycle)]

    def record(nodes, context, seconds, accepted, predicted=None) -> None:  # type: ignore[no-untyped-def]
        assert nodes == cycle[step["i"] % len(cycle)]
        assert (predicted is None) == (nodes == 1)
        step["i"] += 1
        log.append((nodes, context))
        observe(nodes, context, seconds, accepted, predicted)

    ctrl.choose_draft = choose_draft  # type: ignore[method-assign]
    ctrl.choose_nodes = choose_nodes  # type: ignore[method-assign]
    ctrl.observe = record  # type: ignore[method-assign]
    if per_call:
        generate = runner.generate

        def restart(*args, **kwargs):  # type: ignore[no-untyped-def]
            step["i"] = 0
            return generate(*args, **kwargs)

        runner.generate = restart  # type: ignore[method-assign]
    return log


def _synthetic_costs(dec: SpeculativeDecoder, cost: Callable[[int], float]) -> None:
    """The controllers see ``cost(N)`` seconds for every round instead of its wall time (the
    choices become a function of the acceptance alone: deterministic)."""
    observe = AutoController.observe
    runner = _runner(dec)
    make = runner.controller

    def controller(batch_size: int) -> AutoController:
        ctrl = make(batch_size)
        if not getattr(ctrl, "_synthetic", False):
            ctrl.observe = (  # type: ignore[method-assign]
                lambda n, c, s, a, p=None, ctrl=ctrl: observe(ctrl, n, c, cost(n), a, p)
            )
            ctrl._synthetic = True  # type: ignore[attr-defined]
        return ctrl

    runner.controller = controller  # type: ignore[method-assign]


def _check_modes(dec: SpeculativeDecoder, out) -> None:  # type: ignore[no-untyped-def]
    """stats.modes: one count per round (a batch: per batched round) over valid modes."""
    s = out.stats
    assert all(v > 0 for v in s.modes.values()), s.modes
    assert set(s.modes) <= {1, *_runner(dec).buckets}, s.modes
    assert sum(s.modes.values()) == (s.batch_rounds if s.batch_size > 1 else s.rounds), s.modes


def _drafted(modes: dict[int, int]) -> int:
    return sum(v for n, v in modes.items() if n > 1)


# ---------------------------------------------------------------------------------------------
# Greedy == HF
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_lossless_random_pair(arch: str) -> None:
    target, drafter = random_pair(arch)
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 128, (1, n), generator=gen) for n in PROMPT_LENS]
    refs = [greedy_reference(target, p, NEW) for p in prompts]
    decoders = [
        SpeculativeDecoder(target, drafter, "auto", budget=8),
        SpeculativeDecoder(target, drafter, "auto", budget=64),
        SpeculativeDecoder(target, drafter, AutoPolicy(64, tree="presto")),
        SpeculativeDecoder(target, drafter, AutoPolicy(2)),  # one bucket (N = 3)
    ]
    assert _runner(decoders[0]).buckets == [5, 9]
    assert _runner(decoders[1]).buckets == [5, 9, 17, 33, 65]
    assert _runner(decoders[3]).buckets == [3]
    for dec in decoders:
        drafted = 0
        for _ in range(2):  # several calls: the controller (and its costs) persist
            for prompt, ref in zip(prompts, refs):
                out = dec.generate(prompt, NEW)
                assert_greedy_equal(target, out.sequences, ref)
                s = out.stats
                assert s.policy == "auto" and s.new_tokens == NEW
                assert sum(s.emitted_per_round) + 1 == NEW
                _check_modes(dec, out)
                drafted += _drafted(s.modes)
        assert drafted >= 4, dec.policy  # the warm-up drafts (largest and smallest buckets)
        assert len(_runner(dec).controllers) == 1


@pytest.mark.parametrize("tree", ["ddtree", "presto"])
def test_lossless_trained_pair_drafts(tree: str) -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, AutoPolicy(64, tree=tree))
    gen = torch.Generator().manual_seed(5)
    after: list = []  # the stats of the calls after the first (the warm-up's)
    for n in (3, 9, 17, 4):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        out = dec.generate(prompt, 48)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 48))
        _check_modes(dec, out)
        after.append(out.stats)
    # A trained pair (τ 2.3-6.9 on these prompts for a fixed tree of 64): after the warm-up,
    # auto drafts a real share of the rounds and accepts deep paths. How many rounds depends on
    # measured wall times (a shared CI machine); the choice itself is tested on synthetic costs
    # in tests/engine/test_auto_controller.py.
    after = after[1:]
    rounds = sum(s.rounds for s in after)
    accepted = [a for s in after for a in s.accepted_lengths]
    assert sum(_drafted(s.modes) for s in after) >= rounds / 10, [s.modes for s in after]
    assert max(accepted) >= 4, accepted


# ---------------------------------------------------------------------------------------------
# A forced sequence of choices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_forced_choices_random_pair(arch: str) -> None:
    target, drafter = random_pair(arch)
    dec = SpeculativeDecoder(target, drafter, "auto", budget=64)
    log = _force(dec, CYCLE)
    gen = torch.Generator().manual_seed(3)
    for n in PROMPT_LENS:
        prompt = torch.randint(0, 128, (1, n), generator=gen)
        log.clear()
        out = dec.generate(prompt, 30)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 30))
        rounds = out.stats.rounds
        want = [CYCLE[i % len(CYCLE)] for i in range(rounds)]
        assert [n for n, _ in log] == want
        assert out.stats.modes == dict(Counter(want))
        # A target step accepts nothing and emits one token.
        for mode, acc, emit in zip(want, out.stats.accepted_lengths, out.stats.emitted_per_round):
            if mode == 1:
                assert (acc, emit) == (0, 1)


def test_forced_choices_trained_pair_drafter_catches_up() -> None:
    # After target steps the drafter's context must hold every committed token: a drafted round
    # of bucket N at context T accepts exactly what a fresh DDTree(N - 1) decoder accepts in
    # its first round from the same T committed tokens (its prefill computed all their
    # features). A drafter that missed the steps' rows would accept less.
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, AutoPolicy(64, tree="ddtree"))
    log = _force(dec, CYCLE)
    fresh = {n: SpeculativeDecoder(target, drafter, "ddtree", budget=n - 1) for n in CYCLE if n > 1}
    gen = torch.Generator().manual_seed(5)
    compared = after_step = deep = 0
    for n in (7, 3):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        log.clear()
        out = dec.generate(prompt, 64)
        seq = out.sequences
        assert_greedy_equal(target, seq, greedy_reference(target, prompt, 64))
        assert out.stats.modes == dict(Counter(m for m, _ in log))
        for r, ((mode, context), acc) in enumerate(zip(log, out.stats.accepted_lengths)):
            if mode == 1 or context + 9 > seq.shape[1]:  # 9: room for a full path (S = 8)
                continue
            first = fresh[mode].generate(seq[:, :context], 9).stats.accepted_lengths[0]
            assert acc == first, (r, mode, context, acc, first)
            compared += 1
            after_step += r > 0 and log[r - 1][0] == 1
            deep += acc >= 2
    assert compared >= 15 and after_step >= 5 and deep >= 5, (compared, after_step, deep)


def test_forced_choices_presto_stream_sees_every_token() -> None:
    # PRESTO's n-gram table is extended by target steps too: after the call it holds exactly
    # the prompt and every generated token.
    target, drafter = trained_pair()
    policy = AutoPolicy(64, tree="presto")
    seen: list = []
    extend = policy.extend_stream
    policy.extend_stream = lambda st, t, c: (seen.append(st), extend(st, t, c))[1]  # type: ignore[method-assign]
    dec = SpeculativeDecoder(target, drafter, policy)
    _force(dec, CYCLE)
    prompt = torch.tensor([[4, 7, 1, 30, 2]])
    out = dec.generate(prompt, 40)
    assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 40))
    assert out.stats.modes[1] >= 8 and max(out.stats.accepted_lengths) >= 2
    stream = seen[-1]
    order = policy.largest.order
    want = NGramPrior(order)
    toks = out.sequences[0].tolist()
    want.sync(toks)
    nz = stream.keys[0] != 0
    got = sorted(zip(stream.keys[0][nz].tolist(), stream.counts[0][nz].tolist()))
    assert got == sorted(zip(want.keys[want.keys != 0].tolist(),
                             want.counts[want.keys != 0].tolist()))  # fmt: skip
    assert stream.history[0].tolist() == toks[-(order - 1) :]


# ---------------------------------------------------------------------------------------------
# Choices from measured costs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_random_drafter_converges_to_target_steps(arch: str) -> None:
    # Almost nothing is accepted from a random drafter at 8 draft nodes over V = 128, and a
    # drafted round costs more than a target step (the draft alone is a forward): after a
    # warm-up call the decoder runs target steps, re-probing drafting now and then. Real timings
    # on a shared CPU can be disturbed for a while, so the best of three calls is taken.
    target, drafter = random_pair(arch)
    dec = SpeculativeDecoder(target, drafter, "auto", budget=8)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128, (1, 6), generator=gen) for _ in range(4)]
    first = dec.generate(prompts[0], 40)
    _check_modes(dec, first)
    assert first.stats.modes.get(9, 0) >= 2 and first.stats.modes.get(5, 0) >= 2  # warm-up
    shares = []
    for p in prompts[1:]:
        out = dec.generate(p, 40)
        _check_modes(dec, out)
        assert out.stats.tau < 1.1  # (a random tree rarely holds the target's token)
        shares.append(out.stats.modes.get(1, 0) / out.stats.rounds)
    assert max(shares) >= 0.8, shares


def test_synthetic_costs_random_drafter_stops_drafting() -> None:
    # Deterministic: a target step costs 1, a drafted round 1.5 + N / 50 (synthetic seconds).
    # With nothing accepted the controller leaves drafting after the warm-up and only re-probes
    # it on its backoff (4, 8, 16, 32 rounds...: at most 3 probes in 40 tokens).
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "auto", budget=8)
    _synthetic_costs(dec, lambda n: 1.0 if n == 1 else 1.5 + n / 50)
    gen = torch.Generator().manual_seed(4)
    first = dec.generate(torch.randint(0, 128, (1, 6), generator=gen), 40)
    assert first.stats.modes.get(9, 0) >= 2 and first.stats.modes.get(5, 0) >= 2
    assert _runner(dec).controller(1).drafting is False
    for _ in range(2):
        out = dec.generate(torch.randint(0, 128, (1, 6), generator=gen), 40)
        _check_modes(dec, out)
        assert _drafted(out.stats.modes) <= 3, out.stats.modes  # probes only


def test_synthetic_costs_trained_pair_keeps_drafting() -> None:
    # The same costs with a trained drafter (several tokens accepted per round): drafting wins.
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "auto", budget=64)
    _synthetic_costs(dec, lambda n: 1.0 if n == 1 else 1.5 + n / 50)
    gen = torch.Generator().manual_seed(6)
    dec.generate(torch.randint(0, 32, (1, 5), generator=gen), 40)
    assert _runner(dec).controller(1).drafting is True
    prompt = torch.randint(0, 32, (1, 8), generator=gen)
    out = dec.generate(prompt, 48)
    assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 48))
    _check_modes(dec, out)
    assert out.stats.modes.get(1, 0) <= 2 and out.stats.tau > 2.5, out.stats.modes


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_batch_greedy_equals_hf(arch: str) -> None:
    target, drafter = random_pair(arch)
    prompts = _prompts(128, (1, 23, 6), seed=11)
    refs = [greedy_reference(target, p[None], NEW)[0, p.numel() :] for p in prompts]
    for budget in (8, 64):
        dec = SpeculativeDecoder(target, drafter, "auto", budget=budget)
        for _ in range(2):
            out = dec.generate(prompts, NEW)
            assert out.new_lengths.tolist() == [NEW] * 3
            for b, (p, ref) in enumerate(zip(prompts, refs)):
                got = _new_tokens(out, b)
                assert_greedy_equal(target, torch.cat([p, got])[None], torch.cat([p, ref])[None])
            _check_modes(dec, out)
            assert out.stats.batch_rounds == max(r.rounds for r in out.request_stats)
        assert set(_runner(dec).controllers) == {3}  # one controller for B = 3, one decision


def test_batch_forced_choices_equal_solo_trained_pair() -> None:
    # One decision per batched round: with the same forced sequence, every request of the batch
    # runs exactly its solo rounds (tokens and accepted lengths), mid-round ends included.
    target, drafter = trained_pair()
    prompts = _prompts(32, (3, 17, 9), seed=5)
    dec = SpeculativeDecoder(target, drafter, "auto", budget=64)
    log_b = _force(dec, CYCLE, batch_size=3)
    _force(dec, CYCLE, batch_size=1)
    out = dec.generate(prompts, 37)
    assert out.new_lengths.tolist() == [37, 37, 37]
    for b, p in enumerate(prompts):
        ref = greedy_reference(target, p[None], 37)
        assert_greedy_equal(target, torch.cat([p, _new_tokens(out, b)])[None], ref)
    assert out.stats.modes == dict(Counter(n for n, _ in log_b))
    _check_modes(dec, out)
    _check_against_solo(dec, prompts, out, 37)
    assert max(out.stats.accepted_lengths) >= 3


def test_batch_trained_pair_unforced_and_stop_ends_one_request() -> None:
    target, drafter = trained_pair()
    prompts = _prompts(32, (3, 17, 9), seed=5)
    dec = SpeculativeDecoder(target, drafter, "auto", budget=16)
    free = [greedy_reference(target, p[None], 30)[0, p.numel() :].tolist() for p in prompts]
    out = dec.generate(prompts, 30)
    for b in range(3):
        assert _new_tokens(out, b).tolist() == free[b]
    _check_modes(dec, out)
    # A token request 0 emits early that another request never emits: that one runs to the end.
    stop = next(
        t for t in free[0][2:] if any(t not in other for other in free[1:]) and t not in free[0][:2]
    )
    out = dec.generate(prompts, 30, stop_token_ids=[stop], pad_token_id=31)
    lens = out.new_lengths.tolist()
    assert lens[0] == free[0].index(stop) + 1 < 30 and max(lens) == 30
    assert out.request_stats[0].stopped and not out.stats.stopped
    for b in range(3):
        want = free[b][: free[b].index(stop) + 1] if stop in free[b] else free[b]
        assert _new_tokens(out, b).tolist() == want
        assert (out.sequences[b, 17 + lens[b] :] == 31).all()
    _check_modes(dec, out)


# ---------------------------------------------------------------------------------------------
# Stop tokens
# ---------------------------------------------------------------------------------------------
def test_stop_token_inside_accepted_path() -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "auto", budget=32)
    # Drafted rounds only (largest and smallest bucket, then the middle), so paths are deep.
    _force(dec, (33, 5, 17, 33, 9))
    gen = torch.Generator().manual_seed(2)
    hits = 0
    for _ in range(6):
        prompt = torch.randint(0, 32, (1, 5), generator=gen)
        full = dec.generate(prompt, 40)
        new = full.sequences[0, 5:].tolist()
        where = _round_of_each_token(full.stats.emitted_per_round)
        # A token whose first occurrence sits inside an accepted path (not a round's last).
        cands = [i for i in range(1, len(new)) if new.index(new[i]) == i and not where[i][1]]
        if not cands:
            continue
        stop = new[cands[0]]
        hits += 1
        out = dec.generate(prompt, 40, stop_token_ids=[stop])
        ref = greedy_reference(target, prompt, 40, eos_token_id=stop)
        assert_greedy_equal(target, out.sequences, ref)
        assert out.sequences[0, -1].item() == stop and out.stats.stopped
        assert out.sequences.shape[1] == 5 + cands[0] + 1
        assert out.stats.rounds == where[cands[0]][0]  # the round that accepted it was the last
        _check_modes(dec, out)
    assert hits >= 2


def test_stop_token_on_a_target_step_and_max_new_mid_round() -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "auto", budget=64)
    prompt = torch.tensor([[4, 7, 1, 30]])
    ref = greedy_reference(target, prompt, 30)
    log = _force(dec, (1, 65, 1, 1, 17))
    full = dec.generate(prompt, 30)
    assert_greedy_equal(target, full.sequences, ref)
    where = _round_of_each_token(full.stats.emitted_per_round)
    assert any(not last for _, last in where[1:]), "no round emitted more than one token"
    for n in range(1, 31):  # max_new_tokens ends anywhere, inside a path or on a step
        out = dec.generate(prompt, n)
        assert out.sequences.shape[1] == 4 + n and out.stats.new_tokens == n
        assert_greedy_equal(target, out.sequences, ref[:, : 4 + n])
    # A stop token first emitted by a target step (round r is log[r - 1]).
    new = ref[0, 4:].tolist()
    modes = [m for m, _ in log[: full.stats.rounds]]
    on_step = [i for i in range(1, 30) if new.index(new[i]) == i and modes[where[i][0] - 1] == 1]
    assert on_step
    stop = new[on_step[0]]
    out = dec.generate(prompt, 30, stop_token_ids=[stop])
    want = greedy_reference(target, prompt, 30, eos_token_id=stop)
    assert_greedy_equal(target, out.sequences, want)
    assert out.stats.stopped and out.sequences.shape[1] == 4 + on_step[0] + 1


# ---------------------------------------------------------------------------------------------
# Sampling: the target's distribution
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch,temperature,forced,num",
    [("llama", 0.8, True, 3000), ("qwen3", 1.0, False, 3000)],
)
def test_distribution_equals_plain_target_sampling(
    arch: str, temperature: float, forced: bool, num: int
) -> None:
    # The first three tokens over many seeds against the exact joint of plain target sampling
    # (as test_sampling.py). Forced: the choices run through every mode across the calls (one
    # sequence continued from call to call); else the controller's own choices. The requests of
    # a batch draw as solo runs with seeds request_seeds(seed, B) (test_batch.py): batches of
    # BATCH copies of the prompt give BATCH independent samples per call.
    steps, vocab, batch = 3, 16, 100
    target = make_target(arch, vocab=vocab, seed=4, init=0.1)
    drafter = make_drafter(target, seed=4)
    prompt = torch.tensor([[3, 1, 4, 1]])
    probs = exact_joint(target, prompt, steps, temperature=temperature)
    dec = SpeculativeDecoder(target, drafter, "auto", budget=48)
    assert _runner(dec).buckets == [5, 9, 17, 33, 49]
    if forced:
        _force(dec, (49, 1, 17, 5, 1, 33, 9, 49), batch_size=batch, per_call=False)
    counts = torch.zeros(vocab**steps, dtype=torch.float64)
    modes: Counter[int] = Counter()
    deep = 0
    for call in range(num // batch):
        out = dec.generate([prompt[0]] * batch, steps, temperature=temperature, seed=1000 * call)
        for b in range(batch):
            t1, t2, t3 = out.sequences[b, -steps:].tolist()
            counts[(t1 * vocab + t2) * vocab + t3] += 1
            acc = out.request_stats[b].accepted_lengths
            deep += bool(acc) and acc[0] >= 2
        modes.update(out.stats.modes)
    assert _drafted(modes) >= 4 and modes[1] >= 1, modes
    if forced:
        assert deep > num // 20  # tokens 2 and 3 from accepted tree nodes: the walk ran
    assert chi_square(counts, probs) > P_MIN
    for pos in range(steps):  # marginals too (more power per position)
        shape = (vocab,) * steps
        m_counts = counts.reshape(shape).sum(dim=[d for d in range(steps) if d != pos])
        m_probs = probs.reshape(shape).sum(dim=[d for d in range(steps) if d != pos])
        assert chi_square(m_counts, m_probs) > P_MIN


def test_sampling_reproducible_for_a_fixed_sequence_of_choices() -> None:
    # The draws are keyed by (seed, round, node): the same choices and seed give the same text.
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "auto", budget=64)
    _force(dec, CYCLE)
    prompt = torch.tensor([[5, 9, 2]])
    kw = dict(temperature=0.9, top_k=20, top_p=0.95)
    a = dec.generate(prompt, 24, seed=7, **kw)
    b = dec.generate(prompt, 24, seed=7, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert a.stats.modes == b.stats.modes
    others = {tuple(dec.generate(prompt, 24, seed=s, **kw).sequences[0].tolist()) for s in range(5)}
    assert len(others) >= 3


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tree", ["ar", "auto", "chain", "d2sd"])
def test_auto_policy_refuses_non_tree_policies(tree: str) -> None:
    with pytest.raises(ValueError, match=rf"AutoPolicy\(tree=.*'{tree}'"):
        AutoPolicy(16, tree=tree)


def test_auto_policy_bad_arguments() -> None:
    with pytest.raises(TypeError, match="tree"):
        AutoPolicy(16, tree=3)  # type: ignore[arg-type]
    for budgets in ((0, 4), (4, 2.5), (True,)):
        with pytest.raises(ValueError, match="budgets"):
            AutoPolicy(16, budgets=budgets)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not one of the buckets"):
        from difftree_rt.policies import PolicyInput

        AutoPolicy(16).select(PolicyInput(torch.zeros(1, 8, 4), torch.zeros(1), 1, max_nodes=6))
    policy = AutoPolicy(20, budgets=(2, 8, 32))
    assert sorted(policy.policies) == [3, 9, 21]
    assert policy.needs.graph_safe  # ddtree's trees: one captured graph per bucket

