"""Greedy decoding is lossless: identical tokens to ``target.generate(do_sample=False)`` in fp32.

Covers every policy x budgets 1, 2, 7, 64, 256 x Qwen3/Llama/Qwen2/Mistral x several prompt
lengths, stop tokens hit inside an accepted path, and ``max_new_tokens`` ending mid-round.
"""

from __future__ import annotations

import pytest
import torch
from draft_reference import chain_acceptance
from engine_helpers import ARCHS, greedy_reference, random_pair, trained_pair
from tests.tolerance import fa_bound, fp64_copy, max_abs_diff

from difftree_rt import SpeculativeDecoder

BUDGETS = (1, 2, 7, 64, 256)
PROMPT_LENS = (1, 6, 23)
NEW = 24


def assert_greedy_equal(model: torch.nn.Module, got: torch.Tensor, ref: torch.Tensor) -> None:
    """Tokens equal; a divergence is tolerated only at a near-tie of the target's logits: a
    top-1/top-2 gap that two correct forwards can reorder, each logit within the FA-style bound
    of the exact (fp64) logits (tests/tolerance.py), the reference's off by its own error."""
    if torch.equal(got, ref):
        return
    assert got.shape == ref.shape, f"length {got.shape} != {ref.shape}"
    k = int((got[0] != ref[0]).nonzero()[0])
    with torch.no_grad():
        logits = model(ref[:, :k]).logits[0, -1]
        exact = fp64_copy(model)(ref[:, :k]).logits[0, -1]
    top = logits.topk(2).values
    gap = float(top[0] - top[1])
    tie = 2 * (fa_bound(logits, exact) + max_abs_diff(logits, exact))
    assert gap < tie, (
        f"diverged at {k}: got {got[0, k]}, want {ref[0, k]} (gap {gap:.3g} > {tie:.3g})"
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_lossless_grid(arch: str) -> None:
    target, drafter = random_pair(arch)
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 128, (1, n), generator=gen) for n in PROMPT_LENS]
    refs = [greedy_reference(target, p, NEW) for p in prompts]
    decoders = [SpeculativeDecoder(target, None, policy="ar")]
    for policy in ("chain", "ddtree"):
        decoders += [SpeculativeDecoder(target, drafter, policy, budget=b) for b in BUDGETS]
    tau_256 = []
    for dec in decoders:
        for prompt, ref in zip(prompts, refs):
            out = dec.generate(prompt, NEW)
            assert out.sequences.shape == ref.shape, (dec.policy_name, dec.budget)
            assert_greedy_equal(target, out.sequences, ref)
            s = out.stats
            assert s.new_tokens == NEW and sum(s.emitted_per_round) + 1 == NEW
            if dec.policy_name == "ddtree" and dec.budget == 256:
                tau_256.append(s.tau)
    # Even with a random drafter a 256-node tree over V = 128 usually holds the target's token:
    # accepted, non-contiguous paths are committed (the tree path of verify/walk/commit runs).
    assert sum(tau_256) / len(tau_256) > 1.5, tau_256


REALISTIC_TAU = {("chain", 7): 3.82, ("ddtree", 7): 4.05, ("ddtree", 64): 4.98}


@pytest.mark.parametrize("policy,budget", list(REALISTIC_TAU))
def test_lossless_with_realistic_acceptance(policy: str, budget: int) -> None:
    target, drafter = trained_pair()
    gen = torch.Generator().manual_seed(5)
    dec = SpeculativeDecoder(target, drafter, policy, budget=budget)
    taus, max_acc = [], 0
    for n in (3, 9, 17):
        prompt = torch.randint(0, 32, (1, n), generator=gen)
        out = dec.generate(prompt, 48)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 48))
        taus.append(out.stats.tau)
        max_acc = max(max_acc, *out.stats.accepted_lengths)
        if policy == "chain":  # exact: an independent replay of chain decoding's acceptance
            want, decided = chain_acceptance(target, drafter, out.sequences[0], n, budget)
            assert decided >= len(want) // 2, (decided, len(want))
            assert out.stats.accepted_lengths[:decided] == want[:decided]
    # 0.9 x the mean τ measured (fp32, CPU): a drafter that accepts markedly less fails.
    assert sum(taus) / len(taus) >= 0.9 * REALISTIC_TAU[policy, budget], taus
    assert max_acc >= 4  # deep accepted paths happen


def _round_of_each_token(emitted_per_round: list[int]) -> list[tuple[int, bool]]:
    """For new token i (i >= 1; token 0 is the prefill's): (round, is it the round's last)."""
    out = [(0, True)]
    for r, n in enumerate(emitted_per_round, start=1):
        out += [(r, j == n - 1) for j in range(n)]
    return out


@pytest.mark.parametrize("policy", ["ar", "chain", "ddtree"])
def test_stop_token_inside_accepted_path(policy: str) -> None:
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, policy, budget=32)
    spec = SpeculativeDecoder(target, drafter, "ddtree", budget=32)
    gen = torch.Generator().manual_seed(2)
    hits = 0
    for _ in range(6):
        prompt = torch.randint(0, 32, (1, 5), generator=gen)
        full = spec.generate(prompt, 40)
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
    assert hits >= 2


def test_stop_token_as_first_token_and_tensor_form() -> None:
    target, drafter = trained_pair()
    prompt = torch.tensor([[1, 2, 3]])
    first = greedy_reference(target, prompt, 1)[0, -1].item()
    for policy in ("ar", "ddtree"):
        dec = SpeculativeDecoder(target, drafter, policy, budget=8)
        out = dec.generate(prompt, 10, stop_token_ids=torch.tensor([first]))
        assert out.sequences.tolist() == [[1, 2, 3, first]]
        assert out.stats.rounds == 0 and out.stats.stopped


@pytest.mark.parametrize("policy,budget", [("ar", 1), ("chain", 7), ("ddtree", 7), ("ddtree", 64)])
def test_max_new_tokens_mid_round(policy: str, budget: int) -> None:
    target, drafter = trained_pair()
    prompt = torch.tensor([[4, 7, 1, 30]])
    ref = greedy_reference(target, prompt, 30)
    dec = SpeculativeDecoder(target, drafter, policy, budget=budget)
    full = dec.generate(prompt, 30)
    # Cut points that fall strictly inside a round's emitted tokens exist when τ > 1.
    where = _round_of_each_token(full.stats.emitted_per_round)
    mid = [n for n in range(1, 30) if not where[n - 1][1]]
    if policy != "ar":
        assert mid, "no round emitted more than one token"
    for n in range(1, 31):
        out = dec.generate(prompt, n)
        assert out.sequences.shape[1] == 4 + n  # never more (nor fewer) than asked
        assert_greedy_equal(target, out.sequences, ref[:, : 4 + n])
        assert out.stats.new_tokens == n


def test_decoder_reuse_and_prompt_longer_than_cache_growth() -> None:
    # max_length=None: the decoder grows its cache; a fixed max_length is honoured.
    target, drafter = random_pair("qwen3")
    gen = torch.Generator().manual_seed(3)
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=16)
    for n in (2, 300):
        prompt = torch.randint(0, 128, (1, n), generator=gen)
        out = dec.generate(prompt, 8)
        assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 8))
    fixed = SpeculativeDecoder(target, drafter, "ddtree", budget=16, max_length=64)
    prompt = torch.randint(0, 128, (1, 20), generator=gen)
    out = fixed.generate(prompt, 20)
    assert_greedy_equal(target, out.sequences, greedy_reference(target, prompt, 20))
