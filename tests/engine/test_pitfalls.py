"""One test per ALGORITHMS.md §9 pitfall that applies to the eager engine.

The shadow check recomputes every draft the decoder made from scratch: the drafter's stateless
forward on the target features of exactly the committed rows ``[0, start)`` (HF
``hidden_states[j + 1]``, config order), the block ``[bonus, MASK...]`` at positions
``start .. start + S - 1``. Any depth/slot/position off-by-one, feature-layer offset or order
error, stale or extra context row (e.g. the bonus, or rejected tree rows) changes the logits.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy_reference, make_target, random_pair, trained_pair
from tests.tolerance import Ref, fp64_copy

from difftree_rt import SpeculativeDecoder
from difftree_rt.models import DFlashDrafter
from difftree_rt.models.dflash import extract_features


def _shadow_check(target, drafter, policy: str, budget: int, monkeypatch, **gen_kw) -> int:
    calls = []
    real_draft = drafter.draft

    def spy(block_ids, cache, span=None):
        # The context after the round's append must be exactly the committed rows [0, start).
        start = int(cache.lengths[0])
        logits = real_draft(block_ids, cache, span)
        calls.append((block_ids.clone(), start, span, logits.clone()))
        return logits

    monkeypatch.setattr(drafter, "draft", spy)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2]])
    out = SpeculativeDecoder(target, drafter, policy, budget=budget).generate(prompt, 40, **gen_kw)
    monkeypatch.undo()
    seq = out.sequences
    assert len(calls) == out.stats.rounds
    target64, drafter64 = fp64_copy(target), fp64_copy(drafter)
    expected_start = prompt.shape[1]
    for r, (block, start, span, logits) in enumerate(calls):
        # Row bookkeeping: start advances by accepted + 1 per round; the eager key span is
        # exact (the context and the block).
        assert start == expected_start
        assert span == start + block.shape[1]
        expected_start += out.stats.accepted_lengths[r] + 1
        # Slot 0 = bonus = the first token not yet committed; then mask tokens.
        assert block[0, 0].item() == seq[0, start].item()
        assert bool((block[0, 1:] == drafter.mask_token_id).all())
        refs = []
        for t, d in ((target, drafter), (target64, drafter64)):  # fp32, then the exact fp64
            with torch.no_grad():
                hs = t(seq[:, :start], output_hidden_states=True).hidden_states
                feats = extract_features(hs, d.config.target_layer_ids)
                positions = start + torch.arange(block.shape[1])[None]
                refs.append(d.compute_logits(d(block, feats, positions))[:, 1:])
        Ref(*refs).check(logits)
    return len(calls)


@pytest.mark.parametrize("policy,budget", [("chain", 7), ("ddtree", 32)])
def test_drafts_equal_stateless_recomputation(policy: str, budget: int, monkeypatch) -> None:
    target, drafter = trained_pair()
    assert _shadow_check(target, drafter, policy, budget, monkeypatch) >= 3


def test_feature_layers_in_config_order(monkeypatch) -> None:
    # Two feature layers listed out of order: concatenation must follow the config.
    target, _ = random_pair("llama")
    gen = torch.Generator().manual_seed(0)
    drafter = DFlashDrafter.for_target(
        target, num_layers=1, block_size=6, target_layer_ids=[1, 0], generator=gen
    )
    assert _shadow_check(target, drafter, "ddtree", 64, monkeypatch) >= 3
    assert _shadow_check(target, drafter, "ddtree", 64, monkeypatch, temperature=1.0, seed=1)


def test_tokens_never_filtered_by_value() -> None:
    # The drafter's mask id is a token the target itself emits (and a stop-free run keeps it).
    target, _ = random_pair("qwen2")
    prompt = torch.tensor([[10, 20, 30]])
    ref = greedy_reference(target, prompt, 30)
    token = ref[0, 10].item()
    gen = torch.Generator().manual_seed(0)
    drafter = DFlashDrafter.for_target(
        target, num_layers=1, block_size=8, mask_token_id=token, generator=gen
    )
    for policy in ("chain", "ddtree"):
        out = SpeculativeDecoder(target, drafter, policy, budget=64).generate(prompt, 30)
        assert torch.equal(out.sequences, ref)
        assert token in out.sequences[0, 3:].tolist()


def test_padding_rows_of_a_small_tree() -> None:
    # Block 2 (depth 1) over V=16 has only 16 prefixes: a 64 budget leaves 48 padding rows
    # (token -1) that must never be embedded out of range, seen, or accepted.
    target = make_target("mistral", vocab=16, seed=2)
    gen = torch.Generator().manual_seed(0)
    drafter = DFlashDrafter.for_target(target, num_layers=1, block_size=2, generator=gen)
    prompt = torch.tensor([[1, 2, 3]])
    out = SpeculativeDecoder(target, drafter, "ddtree", budget=64).generate(prompt, 20)
    assert torch.equal(out.sequences, greedy_reference(target, prompt, 20))
    assert out.stats.tau == 2.0  # every depth-1 token is in the tree


def test_root_position_and_commit_rows(monkeypatch) -> None:
    # Verify puts node i at position base_len + depth[i] and commit moves the accepted rows:
    # after every round the target cache length equals the committed token count.
    target, drafter = trained_pair()
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=32)
    lengths = []
    real_commit = type(dec._adapter_for(64)).commit

    def spy(self, path, accepted, active=None):
        real_commit(self, path, accepted, active)
        lengths.append(int(self.base_len[0]))

    monkeypatch.setattr(type(dec.adapter), "commit", spy)
    prompt = torch.tensor([[7, 7, 1]])
    out = dec.generate(prompt, 30)
    assert lengths == [
        3 + sum(a + 1 for a in out.stats.accepted_lengths[: r + 1]) for r in range(out.stats.rounds)
    ]
