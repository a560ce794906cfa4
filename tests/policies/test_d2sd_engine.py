"""d2sd through the engine: the batched second drafting pass, lossless greedy (identical tokens
to HF greedy) with and without a separate VP drafter (other block sizes included), an oracle
second drafter that must be accepted whole, lossless sampling, and named errors."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter, make_target, random_pair, trained_pair
from sampling_check import assert_sampling_lossless
from test_greedy import assert_greedy_equal
from tests.tolerance import Ref, fp64_copy

from difftree_rt import SpeculativeDecoder
from difftree_rt.models import DFlashDrafter
from difftree_rt.policies import D2SDPolicy
from difftree_rt.policies.d2sd import branch_blocks


def _vp(target: torch.nn.Module, block_size: int, seed: int = 11) -> DFlashDrafter:
    return make_drafter(target, block_size=block_size, seed=seed)


# ---- the second drafting pass ----------------------------------------------------------------


@torch.no_grad()
def test_draft_branches_equals_stateless_forward_per_row() -> None:
    target, drafter = random_pair("qwen3")
    drafter.bind(target)
    gen = torch.Generator().manual_seed(0)
    T, S, R = 13, drafter.block_size, 4
    ids = torch.randint(0, 128, (1, T), generator=gen)
    features = drafter.extract_features(target(ids, output_hidden_states=True))
    cache = drafter.new_cache(1, 64)
    drafter.append_context(cache, features)
    trunk = torch.randint(0, 128, (1, S - 1), generator=gen)
    boundary = torch.tensor([[0, 3, 1, S - 2]], dtype=torch.int32)
    blocks = branch_blocks(torch.tensor([7]), trunk, boundary, S, drafter.mask_token_id)
    # Hand-checked layout: [root, trunk[:i], MASK...].
    assert blocks[0, 1].tolist() == [7, *trunk[0, :3].tolist()] + [drafter.mask_token_id] * (S - 4)
    got = drafter.draft_branches(blocks, cache, span=T)
    assert got.shape == (1, R, S - 1, target.config.vocab_size)
    fp64 = fp64_copy(drafter)
    wants = []
    for r in range(R):
        positions = torch.arange(T, T + S)[None]
        hidden = drafter(blocks[:, r], features, positions)
        exact = fp64.compute_logits(fp64(blocks[:, r], features.double(), positions)[:, 1:])
        wants.append(Ref(drafter.compute_logits(hidden[:, 1:]), exact))
        wants[r].check(got[:, r])
    # The context is untouched (the rows used scratch only): a plain draft afterwards equals
    # the row without a visible prefix.
    plain = drafter.draft(drafter.make_block(torch.tensor([7])), cache, span=T + S)
    wants[0].check(plain)


@torch.no_grad()
def test_draft_branches_ragged_batch() -> None:
    target, drafter = random_pair("llama")
    drafter.bind(target)
    gen = torch.Generator().manual_seed(1)
    T, S = 11, drafter.block_size
    ids = torch.randint(0, 128, (2, T), generator=gen)
    features = drafter.extract_features(target(ids, output_hidden_states=True))
    cache = drafter.new_cache(2, 64)
    drafter.append_context(cache, features)
    lengths = torch.tensor([T, 7])
    cache.crop(lengths)  # request 1 keeps 7 context rows: a ragged (non-uniform) cache
    blocks = torch.randint(0, 128, (2, 3, S), generator=gen)
    got = drafter.draft_branches(blocks, cache, span=T)
    fp64 = fp64_copy(drafter)
    for b in range(2):
        n = int(lengths[b])
        for r in range(3):
            block, feats, positions = (
                blocks[b : b + 1, r],
                features[b : b + 1, :n],
                torch.arange(n, n + S)[None],
            )
            want = drafter.compute_logits(drafter(block, feats, positions)[:, 1:])
            exact = fp64.compute_logits(fp64(block, feats.double(), positions)[:, 1:])
            Ref(want, exact).check(got[b : b + 1, r])


# ---- greedy losslessness -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("budget", [1, 7, 64])
def test_greedy_lossless_random_pair(arch: str, budget: int) -> None:
    target, drafter = random_pair(arch)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128, (1, n), generator=gen) for n in (1, 9, 23)]
    refs = [greedy_reference(target, p, 24) for p in prompts]
    policies = [
        D2SDPolicy(budget),
        D2SDPolicy(budget, k=1),
        D2SDPolicy(budget, k=3, vp_drafter=_vp(target, 6)),  # shallower second pass
        D2SDPolicy(budget, k=2, vp_drafter=_vp(target, 12)),  # deeper second pass
    ]
    for policy in policies:
        dec = SpeculativeDecoder(target, drafter, policy)
        for prompt, ref in zip(prompts, refs):
            out = dec.generate(prompt, 24)
            assert_greedy_equal(target, out.sequences, ref)
            assert sum(out.stats.emitted_per_round) + 1 == 24


def test_greedy_lossless_trained_pair_with_stop_tokens() -> None:
    target, drafter = trained_pair()
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 32, (1, n), generator=gen) for n in (3, 9, 17, 5, 30)]
    taus: dict[str, list[float]] = {"chain": [], "d2sd": [], "d2sd-published": []}
    for prompt in prompts:
        ref = greedy_reference(target, prompt, 40)
        for name, policy in [
            ("chain", "chain"),
            ("d2sd", D2SDPolicy(64)),
            ("d2sd-published", D2SDPolicy(64, alternative=False)),
        ]:
            dec = SpeculativeDecoder(target, drafter, policy, budget=64)
            out = dec.generate(prompt, 40)
            assert_greedy_equal(target, out.sequences, ref)
            taus[name].append(out.stats.tau)
        # A stop token inside an accepted path ends generation right after it.
        stop = int(ref[0, prompt.shape[1] + 5])
        out = dec.generate(prompt, 40, stop_token_ids=[stop])
        first = (ref[0, prompt.shape[1] :] == stop).nonzero()[0, 0].item()
        assert torch.equal(out.sequences, ref[:, : prompt.shape[1] + first + 1])
    mean = {k: sum(v) / len(v) for k, v in taus.items()}
    # The joint tree contains the first draft's chain (budget >= L1 + k * L2 here), and the
    # alternative-token branches add acceptance on this pair (2.98 vs 2.80 when written).
    assert mean["d2sd"] > mean["chain"] > 1.5, mean
    assert mean["d2sd-published"] >= mean["chain"] - 0.05, mean


class _OracleVP(DFlashDrafter):
    """A second drafter that knows the target's greedy continuation: its branch rows hold the
    true tokens, so with boundary 0 in the top-k a whole branch must be accepted every round."""

    truth: torch.Tensor  # [T_total] the greedy sequence (prompt + continuation)

    def draft_branches(self, block_ids, cache, *, span):  # type: ignore[override]
        B, R, S = block_ids.shape
        V = self.config.vocab_size
        pos = cache.lengths[:, None] + 1 + torch.arange(S - 1)  # [B, S - 1]
        tokens = self.truth[pos.clamp(max=self.truth.shape[0] - 1)]
        logits = torch.full((B, R, S - 1, V), -30.0)
        logits.scatter_(3, tokens[:, None].expand(B, R, S - 1)[..., None], 30.0)
        return logits


@pytest.mark.parametrize("alternative", [True, False])
def test_oracle_second_draft_is_accepted_whole(alternative: bool) -> None:
    target, drafter = random_pair("qwen3")
    prompt = torch.tensor([[5, 17, 3, 99]])
    new = 40
    ref = greedy_reference(target, prompt, new + 16)
    gen = torch.Generator().manual_seed(0)
    vp = _OracleVP.for_target(target, num_layers=1, block_size=8, generator=gen)
    vp.truth = ref[0]
    # k = L1: every boundary gets a branch, so the one at the first draft's first mistake
    # (or the first draft itself) is the true continuation, L2 = 7 deep.
    policy = D2SDPolicy(64, k=drafter.block_size - 1, vp_drafter=vp, alternative=alternative)
    out = SpeculativeDecoder(target, drafter, policy).generate(prompt, new)
    assert torch.equal(out.sequences, ref[:, : prompt.shape[1] + new])
    # Every round but the last accepts the full depth (the random first draft alone almost
    # never gets past depth 1).
    assert out.stats.accepted_lengths[:-1] == [7] * (len(out.stats.accepted_lengths) - 1)


# ---- sampling losslessness -----------------------------------------------------------------


@pytest.mark.parametrize("temperature,top_p", [(1.0, None), (0.7, 0.9)])
def test_sampling_distribution_equals_target(temperature: float, top_p: float | None) -> None:
    assert_sampling_lossless(
        lambda target: D2SDPolicy(48, k=7),
        temperature=temperature,
        top_p=top_p,
        min_accepted=1,
    )


# ---- errors --------------------------------------------------------------------------------


def test_errors_name_the_argument() -> None:
    target, drafter = random_pair("qwen3")
    with pytest.raises(ValueError, match="k must be"):
        D2SDPolicy(16, k=0)
    with pytest.raises(TypeError, match="vp_drafter must be"):
        D2SDPolicy(16, vp_drafter=target)
    gen = torch.Generator().manual_seed(1)
    other_layers = [0] if list(drafter.config.target_layer_ids) != [0] else [1]
    vp = DFlashDrafter.for_target(
        target, block_size=8, target_layer_ids=other_layers, generator=gen
    )
    with pytest.raises(ValueError, match="vp_drafter reads target layers"):
        SpeculativeDecoder(target, drafter, D2SDPolicy(16, vp_drafter=vp))
    small = make_target("qwen3", vocab=64)
    with pytest.raises(ValueError, match="vp_drafter does not fit"):
        SpeculativeDecoder(target, drafter, D2SDPolicy(16, vp_drafter=make_drafter(small)))
    with pytest.raises(ValueError, match=r"d2sd: PolicyInput\.branch_logits"):
        from difftree_rt.policies import PolicyInput

        D2SDPolicy(16).select(PolicyInput(torch.zeros(1, 3, 8), torch.tensor([1])))
