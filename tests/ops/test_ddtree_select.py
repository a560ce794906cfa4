"""ddtree_select: C++ (heap form) against the reference (parallel beam form) bit for bit, an
exhaustive brute force on tiny lattices, invariants, hand-checked trees and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from tests.conftest import random_logits
from tests.ops.tree_checks import assert_tree_invariants

from difftree_rt import ops, reference


def assert_same_tree(a, b) -> None:  # type: ignore[no-untyped-def]
    names = ["token", "parent", "depth", "score", "first_child", "next_sibling", "anc", "num_nodes"]
    for name, x, y in zip(names, a.arrays(), b.arrays()):
        assert x.dtype == y.dtype, name
        assert torch.equal(x, y), name
    assert a.max_depth == b.max_depth


def _case(seed: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    B = 1 + seed % 4
    L = int(torch.randint(0, 17, (), generator=gen))
    V = int([2, 5, 33, 100, 1000][seed % 5])
    if seed % 10 == 0:
        budget = int(torch.randint(1, 1025, (), generator=gen))
    else:
        budget = int(torch.randint(1, 80, (), generator=gen))
    x = random_logits(gen, B, L, V, ties=seed % 3 == 0, neg_inf=seed % 7 == 0)
    root = torch.randint(0, V, (B,), generator=gen)
    return x, budget, root


@pytest.mark.parametrize("seed", range(600))
def test_matches_reference_random(seed: int) -> None:
    x, budget, root = _case(seed)
    tree = ops.ddtree_select(x, budget, root_token=root)
    ref = reference.ddtree_select(x, budget, root_token=root)
    assert_same_tree(tree, ref)
    assert_tree_invariants(tree)
    assert tree.token[:, 0].tolist() == root.tolist()


def test_large_vocab_case() -> None:
    gen = torch.Generator().manual_seed(11)
    x = random_logits(gen, 2, 15, 50_000)
    for budget in (64, 1024):
        assert_same_tree(ops.ddtree_select(x, budget), reference.ddtree_select(x, budget))


@pytest.mark.parametrize("seed", range(200))
def test_from_candidates_matches_reference_with_exact_ties(seed: int) -> None:
    gen = torch.Generator().manual_seed(1000 + seed)
    B, L = 1 + seed % 3, 1 + seed % 9
    K = 1 + seed % 6
    # Log-probs from a tiny set of values: many exactly tied paths.
    values = torch.tensor([0.0, -0.5, -1.0, -1.5, -2.0])
    lp = values[torch.randint(0, 5, (B, L, K), generator=gen)].sort(-1, descending=True).values
    tok = torch.stack([torch.randperm(50, generator=gen)[:K] for _ in range(B * L)]).view(B, L, K)
    budget = 1 + seed % 40
    tree = ops.ddtree_select_from_candidates(tok, lp, budget)
    assert_same_tree(tree, reference.ddtree_select_from_candidates(tok, lp, budget))
    assert_tree_invariants(tree)


def _brute_force(lp: torch.Tensor, budget: int) -> list[tuple[int, ...]]:
    """Every path of the K^L lattice, scored in fp32 the same way, in the normative order."""
    L, K = lp.shape
    nodes: dict[tuple[int, ...], float] = {(): 0.0}
    all_paths: list[tuple[int, ...]] = []
    for d in range(1, L + 1):
        for ranks in itertools.product(range(K), repeat=d):
            parent = ranks[:-1]
            s = (torch.tensor(nodes[parent], dtype=torch.float32) + lp[d - 1, ranks[-1]]).item()
            nodes[ranks] = s
            all_paths.append(ranks)
    # Within a depth: (score desc, parent's within-depth order, rank) — defined recursively.
    by_depth: dict[int, list[tuple[int, ...]]] = {}
    for p in all_paths:
        by_depth.setdefault(len(p), []).append(p)
    pos: dict[tuple[int, ...], int] = {(): 0}
    for d in sorted(by_depth):
        level = sorted(by_depth[d], key=lambda p: (-nodes[p], pos[p[:-1]], p[-1]))
        for i, p in enumerate(level):
            pos[p] = i
    ranked = sorted(all_paths, key=lambda p: (-nodes[p], len(p), pos[p]))
    return ranked[:budget]


@pytest.mark.parametrize("seed", range(60))
def test_exhaustive_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(5000 + seed)
    L, K = 1 + seed % 4, 1 + seed % 3
    values = torch.tensor([0.0, -0.25, -0.5, -1.0, -3.0])
    if seed % 2:
        lp = -torch.rand((L, K), generator=gen) * 3
    else:
        lp = values[torch.randint(0, 5, (L, K), generator=gen)]
    lp = lp.sort(-1, descending=True).values
    tok = torch.arange(K).repeat(L, 1) + 100 * torch.arange(L)[:, None]
    budget = 1 + seed % 20
    tree = ops.ddtree_select_from_candidates(tok[None], lp[None], budget)
    expected = _brute_force(lp, budget)
    n = int(tree.num_nodes[0])
    assert n == 1 + len(expected)
    # Node i's rank path, recovered from tokens (token = 100 * depth_index + rank).
    got = []
    for i in range(1, n):
        ranks = []
        j = i
        while j > 0:
            ranks.append(int(tree.token[0, j]) % 100)
            j = int(tree.parent[0, j])
        got.append(tuple(reversed(ranks)))
    assert got == expected


def test_hand_checked_chain() -> None:
    # K = 1: a chain, depth by depth.
    tok = torch.tensor([[[5], [6], [7]]])
    lp = torch.tensor([[[-0.1], [-0.2], [-0.3]]])
    tree = ops.ddtree_select_from_candidates(tok, lp, 8, root_token=torch.tensor([9]))
    assert tree.num_nodes.tolist() == [4]
    assert tree.token[0, :4].tolist() == [9, 5, 6, 7]
    assert tree.parent[0, :4].tolist() == [-1, 0, 1, 2]
    assert tree.score[0, :4].tolist() == pytest.approx([0.0, -0.1, -0.3, -0.6])
    assert bool(tree.is_chain()[0])


def test_hand_checked_star() -> None:
    tok = torch.tensor([[[3, 1, 2]]])
    lp = torch.tensor([[[-0.5, -1.0, -2.0]]])
    tree = ops.ddtree_select_from_candidates(tok, lp, 2)
    assert tree.token[0].tolist() == [-1, 3, 1]
    assert tree.parent[0].tolist() == [-1, 0, 0]
    assert tree.first_child[0].tolist() == [1, -1, -1]
    assert tree.next_sibling[0].tolist() == [-1, 2, -1]
    assert not bool(tree.is_chain()[0])


def test_hand_checked_branching_order() -> None:
    # depth 1: a=-0.1, b=-1.0; depth 2: c=-0.2, d=-2.0.
    # paths: a (-0.1), ac (-0.3), b (-1.0), bc (-1.2), ad (-2.1), ...
    tok = torch.tensor([[[10, 11], [20, 21]]])
    lp = torch.tensor([[[-0.1, -1.0], [-0.2, -2.0]]])
    tree = ops.ddtree_select_from_candidates(tok, lp, 4)
    assert tree.token[0].tolist() == [-1, 10, 20, 11, 20]
    assert tree.parent[0].tolist() == [-1, 0, 1, 0, 3]
    assert tree.depth[0].tolist() == [0, 1, 2, 1, 2]


def test_budget_one_and_root_only() -> None:
    x = torch.randn(2, 5, 10)
    tree = ops.ddtree_select(x, 1)
    assert tree.capacity == 2 and tree.num_nodes.tolist() == [2, 2]
    assert tree.token[:, 1].tolist() == x[:, 0].argmax(-1).tolist()
    empty = ops.ddtree_select(torch.randn(2, 0, 10), 7)
    assert empty.num_nodes.tolist() == [1, 1] and empty.capacity == 8
    assert_tree_invariants(empty)


@pytest.mark.parametrize("budget", [31, 32, 40, 63, 64, 70])
def test_capacity_not_multiple_of_32(budget: int) -> None:
    gen = torch.Generator().manual_seed(budget)
    x = random_logits(gen, 2, 8, 50)
    tree = ops.ddtree_select(x, budget)
    assert tree.anc.shape == (2, budget + 1, (budget + 32) // 32)
    assert_tree_invariants(tree)
    assert_same_tree(tree, reference.ddtree_select(x, budget))


def test_fewer_paths_than_budget_pads() -> None:
    x = torch.randn(1, 2, 2)  # at most 2 + 4 = 6 draft nodes
    tree = ops.ddtree_select(x, 20)
    assert tree.num_nodes.tolist() == [7]
    assert_tree_invariants(tree)


def test_truncate_is_a_valid_smaller_tree() -> None:
    gen = torch.Generator().manual_seed(2)
    x = random_logits(gen, 2, 6, 40)
    big = ops.ddtree_select(x, 100)
    for n in (1, 2, 17, 33, 60):
        small = big.truncate(n)
        assert_tree_invariants(small)
        # A truncated tree is the tree a smaller budget selects.
        assert_same_tree(small, ops.ddtree_select(x, n - 1) if n > 1 else small)


@pytest.mark.parametrize("budget", [0, -3, 4097])
def test_budget_out_of_range(budget: int) -> None:
    with pytest.raises(ValueError, match=r"budget: expected a value in \[1, 4096\]"):
        ops.ddtree_select(torch.zeros(1, 3, 10), budget)


def test_bad_candidates() -> None:
    tok = torch.tensor([[[1, 2, 3]]])
    with pytest.raises(ValueError, match="cand_logprob: expected finite log-probs <= 0"):
        ops.ddtree_select_from_candidates(tok, torch.tensor([[[-1.0, -0.5, -2.0]]]), 4)
    with pytest.raises(ValueError, match="cand_logprob: expected finite"):
        ops.ddtree_select_from_candidates(tok, torch.tensor([[[0.5, -0.5, -2.0]]]), 4)
    with pytest.raises(ValueError, match="cand_logprob: expected finite"):
        ops.ddtree_select_from_candidates(tok, torch.tensor([[[float("nan"), -1.0, -2.0]]]), 4)
    with pytest.raises(ValueError, match="cand_token: expected distinct tokens per depth"):
        ops.ddtree_select_from_candidates(
            torch.tensor([[[1, 2, 1]]]), torch.tensor([[[-1.0, -1.5, -2.0]]]), 4
        )
    with pytest.raises(ValueError, match=r"cand_token: expected token ids in \[0, 2\^31\)"):
        ops.ddtree_select_from_candidates(
            torch.tensor([[[1, -2, 3]]]), torch.tensor([[[-1.0, -1.5, -2.0]]]), 4
        )
    with pytest.raises(ValueError, match=r"cand_token: expected shape \[B, L, K\]"):
        ops.ddtree_select_from_candidates(
            torch.tensor([[[1, 2]]]), torch.tensor([[[-1.0, -1.5, -2.0]]]), 4
        )
    with pytest.raises(TypeError, match="cand_logprob: expected dtype float32"):
        ops.ddtree_select_from_candidates(tok, torch.tensor([[[-1.0, -1.5, -2.0]]]).double(), 4)
    with pytest.raises(ValueError, match=r"root_token: expected shape \[B\]"):
        ops.ddtree_select_from_candidates(
            tok, torch.tensor([[[-1.0, -1.5, -2.0]]]), 4, root_token=torch.tensor([1, 2])
        )


def test_max_budget_4096() -> None:
    gen = torch.Generator().manual_seed(4096)
    x = random_logits(gen, 1, 16, 50)
    tree = ops.ddtree_select(x, 4096)
    assert tree.capacity == 4097 and tree.anc.shape == (1, 4097, 129)
    assert_same_tree(tree, reference.ddtree_select(x, 4096))
    assert_tree_invariants(tree)
