"""Tree verification and commit on hybrid Gated-DeltaNet targets, against transformers itself.

Every node's logits from ``TargetAdapter.verify`` must equal the model's own logits when the
node's root-to-node path is appended to the committed context, computed by transformers token
by token (its cached decode: ``causal_conv1d_update`` + the recurrent gated delta rule, the
torch fallback of FLA's kernels). A commit must leave exactly the states a fresh prefill of the
committed sequence builds. Random trees, depth-16 chains and wide stars; fp32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from difftree_rt.models.target import TargetAdapter
from difftree_rt.reference.ddtree import tree_from_parents

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from hybrid_targets import FAMILIES, make_hybrid_target  # noqa: E402

VOCAB = 64
ATOL = 2e-4  # fp32 logits of a 4-layer model: recurrent vs substitution order of sums
STATE_ATOL = 2e-4


@pytest.fixture(scope="module", params=FAMILIES)
def target(request: pytest.FixtureRequest) -> torch.nn.Module:
    return make_hybrid_target(request.param, seed=3, vocab=VOCAB)


@torch.no_grad()
def _hf_path_logits(model: torch.nn.Module, prompt: list[int], path: list[int]) -> torch.Tensor:
    """Logits after ``prompt + path``: HF prefill of the prompt, then one cached step per path
    token (transformers' own single-token decode of each layer)."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    logits = out.logits[0, -1]
    for t in path:
        out = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
        logits = out.logits[0, -1]
    return logits


def _tree(parents: list[int], tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens [1, N], depth [1, N], anc [1, N, W])`` of a tree given by parent ids."""
    depths = []
    for p in parents:
        depths.append(0 if p < 0 else depths[p] + 1)
    num_n = len(parents)
    tree = tree_from_parents(
        torch.tensor([tokens], dtype=torch.int32),
        torch.tensor([parents], dtype=torch.int32),
        torch.tensor([depths], dtype=torch.int32),
        torch.zeros((1, num_n)),
        torch.tensor([num_n], dtype=torch.int32),
        max(depths),
    )
    return tree.token.long(), tree.depth.long(), tree.anc


def _random_parents(num_n: int, gen: torch.Generator) -> list[int]:
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, num_n)]


SHAPES = {
    "random": lambda n, g: _random_parents(n, g),
    "chain16": lambda n, g: [-1] + list(range(16)),
    "star": lambda n, g: [-1] + [0] * (n - 1),
}


def _paths(parents: list[int]) -> list[list[int]]:
    """Node ids root..i for every node i."""
    out = []
    for i in range(len(parents)):
        p, path = i, []
        while p >= 0:
            path.append(p)
            p = parents[p]
        out.append(path[::-1])
    return out


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("prompt_len", [1, 70])
def test_verify_equals_each_path_run_by_transformers(
    target: torch.nn.Module, shape: str, prompt_len: int
) -> None:
    gen = torch.Generator().manual_seed(prompt_len * 7 + len(shape))
    num_n = 17 if shape == "chain16" else 24
    parents = SHAPES[shape](num_n, gen)
    tokens = torch.randint(0, VOCAB, (num_n,), generator=gen).tolist()
    prompt = torch.randint(0, VOCAB, (prompt_len,), generator=gen).tolist()
    ids, depth, anc = _tree(parents, tokens)
    adapter = TargetAdapter(target, max_length=128)
    adapter.prefill(torch.tensor([prompt]))
    got = adapter.verify(ids, depth, anc).logits[0]
    for i, path in enumerate(_paths(parents)):
        seq = [tokens[j] for j in path]
        want = _hf_path_logits(target, prompt, seq)
        # transformers' own two forms (token by token vs one chunked forward) differ by float
        # rounding: the bound is a multiple of that plus a floor.
        with torch.no_grad():
            chunked = target(torch.tensor([prompt + seq])).logits[0, -1]
        bound = 4 * float((want - chunked).abs().max()) + ATOL
        err = float((got[i] - want).abs().max())
        assert err <= bound, (i, err, bound)


def test_chain_verify_without_mask_equals_tree_verify(target: torch.nn.Module) -> None:
    # A chain verified causally (anc None) and as a tree bitmask: the same rows.
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, VOCAB, (12,), generator=gen).tolist()
    ids, depth, anc = _tree([-1] + list(range(11)), tokens)
    adapter = TargetAdapter(target, max_length=64)
    adapter.prefill(torch.randint(0, VOCAB, (1, 5), generator=gen))
    a = adapter.verify(ids, depth, anc).logits
    b = adapter.verify(ids, depth, None).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("accepted_path", [[0], [0, 2], [0, 1, 4, 9, 13]])
def test_commit_equals_fresh_prefill(target: torch.nn.Module, accepted_path: list[int]) -> None:
    gen = torch.Generator().manual_seed(11)
    parents = [-1, 0, 0, 1, 1, 2, 3, 4, 4, 4, 5, 6, 8, 9, 9, 10]
    tokens = torch.randint(0, VOCAB, (len(parents),), generator=gen).tolist()
    prompt = torch.randint(0, VOCAB, (7,), generator=gen).tolist()
    ids, depth, anc = _tree(parents, tokens)
    adapter = TargetAdapter(target, max_length=64)
    adapter.prefill(torch.tensor([prompt]))
    adapter.verify(ids, depth, anc)
    path = torch.tensor([accepted_path + [0] * (6 - len(accepted_path))])
    adapter.commit(path, torch.tensor([len(accepted_path) - 1]))

    fresh = TargetAdapter(target, max_length=64)
    fresh.prefill(torch.tensor([prompt + [tokens[j] for j in accepted_path]]))
    assert int(adapter.base_len[0]) == int(fresh.base_len[0])
    # The path's rows reach the linear layers through the earlier layers, computed as tree
    # nodes here and as causal rows there: equal up to fp32 rounding (a wrong commit is off by
    # O(0.1)).
    for got, want in zip(
        adapter.cache.linear.tensors(), fresh.cache.linear.tensors(), strict=True
    ):
        torch.testing.assert_close(got, want, atol=STATE_ATOL, rtol=1e-3)
    nxt = torch.tensor([[3]])
    torch.testing.assert_close(
        adapter.decode(nxt).logits, fresh.decode(nxt).logits, atol=4 * ATOL, rtol=1e-3
    )


def test_inactive_request_keeps_its_states(target: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(12)
    adapter = TargetAdapter(target, max_length=64, batch_size=2)
    adapter.prefill(torch.randint(0, VOCAB, (2, 6), generator=gen))
    before = [t.clone() for t in adapter.cache.linear.tensors()]
    ids, depth, anc = _tree([-1, 0, 1], [1, 2, 3])
    adapter.verify(ids.repeat(2, 1), depth.repeat(2, 1), anc.repeat(2, 1, 1))
    adapter.commit(
        torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.tensor([2, 2]), torch.tensor([True, False])
    )
    for got, old in zip(adapter.cache.linear.tensors(), before, strict=True):
        assert torch.equal(got[1], old[1])
        assert not torch.equal(got[0], old[0])


def test_reset_clears_the_states(target: torch.nn.Module) -> None:
    adapter = TargetAdapter(target, max_length=64)
    prompt = torch.tensor([[5, 6, 7, 8]])
    first = adapter.prefill(prompt).logits
    adapter.prefill(torch.tensor([[9, 10]]))
    adapter.reset()
    assert all(bool((t == 0).all()) for t in adapter.cache.linear.tensors())
    torch.testing.assert_close(adapter.prefill(prompt).logits, first, atol=0, rtol=0)


def test_padded_batch_prefill_commits_only_real_rows(target: torch.nn.Module) -> None:
    # A right-padded batch (lengths): request 1's padding rows must not enter its states. Long
    # enough (150 rows) to span three commit chunks of a causal forward.
    gen = torch.Generator().manual_seed(13)
    ids = torch.randint(0, VOCAB, (2, 150), generator=gen)
    adapter = TargetAdapter(target, max_length=256, batch_size=2)
    out = adapter.prefill(ids, last_logits_only=True, lengths=[150, 70])
    solo = TargetAdapter(target, max_length=256)
    want = solo.prefill(ids[1:, :70], last_logits_only=True)
    torch.testing.assert_close(out.logits[1], want.logits[0], atol=ATOL, rtol=1e-4)
    for got, ref in zip(adapter.cache.linear.tensors(), solo.cache.linear.tensors(), strict=True):
        torch.testing.assert_close(got[1], ref[0], atol=STATE_ATOL, rtol=1e-3)


def test_unknown_linear_layer_is_refused() -> None:
    model = make_hybrid_target("qwen3_5", seed=0, vocab=VOCAB)
    layer = model.model.layers[0]
    layer.linear_attn = torch.nn.Linear(4, 4)  # not a Gated-DeltaNet module
    with pytest.raises(ValueError, match="linear-attention layer 0"):
        TargetAdapter(model, max_length=32)
