"""D²SD ops: boundaries and the joint tree, C++ vs the plain-Python reference (bit-identical,
ties included), hand-checked cases, the tree = the set of row prefixes, named errors."""

from __future__ import annotations

import math

import pytest
import torch
from tests.ops.test_ddtree_select import assert_same_tree
from tests.ops.tree_checks import assert_tree_invariants

from difftree_rt import ops
from difftree_rt.reference import d2sd as ref


def _trunk_logprob(gen: torch.Generator, B: int, L: int, ties: bool) -> torch.Tensor:
    if ties:  # few distinct values, exact 0 (c = 1: r = 0 there) included
        return -(torch.randint(0, 3, (B, L), generator=gen).float() * 0.5)
    return (-torch.rand(B, L, generator=gen) * 4).float()


# ---- boundaries ---------------------------------------------------------------------------


def test_boundaries_hand_checked() -> None:
    # c = 0.9, 0.5, 0.1: r(0) = 0.1, r(1) = 0.9 * 0.5 = 0.45, r(2) = 0.9 * 0.5 * 0.9 = 0.405.
    lp = torch.tensor([[math.log(0.9), math.log(0.5), math.log(0.1)]], dtype=torch.float32)
    assert ops.d2sd_boundaries(lp, 3).tolist() == [[1, 2, 0]]
    assert ops.d2sd_boundaries(lp, 1).tolist() == [[1]]
    # All c = 1 except the last: only i = L - 1 has r > 0; the rest tie at r = 0 -> smaller i.
    lp = torch.tensor([[0.0, 0.0, 0.0, -1.0]])
    assert ops.d2sd_boundaries(lp, 4).tolist() == [[3, 0, 1, 2]]
    # Depth 1: the only boundary is 0.
    assert ops.d2sd_boundaries(torch.tensor([[-0.3]]), 1).tolist() == [[0]]


def test_boundaries_are_the_top_k_of_r() -> None:
    gen = torch.Generator().manual_seed(3)
    lp = _trunk_logprob(gen, 4, 15, ties=False)
    got = ops.d2sd_boundaries(lp, 4)
    c = lp.double().exp()
    for b in range(4):
        r = [float(torch.prod(c[b, :i]) * (1 - c[b, i])) for i in range(15)]
        assert got[b].tolist() == sorted(range(15), key=lambda i: -r[i])[:4]


@pytest.mark.parametrize("seed", range(40))
def test_boundaries_match_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, L = 1 + seed % 3, 1 + (seed * 7) % 20
    k = 1 + seed % L
    lp = _trunk_logprob(gen, B, L, ties=seed % 3 == 0)
    got = ops.d2sd_boundaries(lp, k)
    assert got.dtype == torch.int32 and got.shape == (B, k)
    assert torch.equal(got, ref.d2sd_boundaries(lp, k))
    for b in range(B):
        assert len(set(got[b].tolist())) == k


# ---- the joint tree -----------------------------------------------------------------------


def _rows(trunk_token, boundary, branch_token, b: int) -> list[list[int]]:
    """Every row's full token list (row 0 = the first draft)."""
    rows = [trunk_token[b].tolist()]
    for k in range(boundary.shape[1]):
        i = int(boundary[b, k])
        if i >= 0:
            rows.append(trunk_token[b, :i].tolist() + branch_token[b, k, i:].tolist())
    return rows


def _paths(tree, b: int) -> set[tuple[int, ...]]:
    n = int(tree.num_nodes[b])
    out = set()
    for i in range(1, n):
        path, j = [], i
        while j > 0:
            path.append(int(tree.token[b, j]))
            j = int(tree.parent[b, j])
        out.add(tuple(reversed(path)))
    return out


def _case(seed: int, B: int, L1: int, L2: int, K: int, V: int):
    gen = torch.Generator().manual_seed(seed)
    trunk_token = torch.randint(0, V, (B, L1), generator=gen)
    trunk_logprob = _trunk_logprob(gen, B, L1, ties=seed % 4 == 0)
    hi = min(L1, L2)
    boundary = torch.randint(-1, hi, (B, K), generator=gen).to(torch.int32)
    branch_token = torch.randint(0, V, (B, K, L2), generator=gen)
    branch_logprob = (-torch.rand(B, K, L2, generator=gen) * 4).float()
    if seed % 4 == 0:
        branch_logprob = -(torch.randint(0, 3, (B, K, L2), generator=gen).float() * 0.5)
    root = torch.randint(0, V, (B,), generator=gen)
    return trunk_token, trunk_logprob, boundary, branch_token, branch_logprob, root


def test_select_hand_checked() -> None:
    # Trunk 5 6 7; branch k=0 keeps 1 token and continues 8 9; branch k=1 keeps 2 and says 7
    # (the trunk's own token: merged, edge = max) then nothing more (L2 = 3).
    trunk = torch.tensor([[5, 6, 7]])
    tlp = torch.tensor([[-0.1, -1.0, -2.0]])
    boundary = torch.tensor([[1, 2]], dtype=torch.int32)
    branch = torch.tensor([[[0, 8, 9], [0, 0, 7]]])
    blp = torch.tensor([[[-9.0, -0.5, -0.25], [-9.0, -9.0, -1.5]]])
    tree = ops.d2sd_select(trunk, tlp, boundary, branch, blp, 16, torch.tensor([4]))
    assert_tree_invariants(tree)
    n = int(tree.num_nodes[0])
    assert n == 6  # root, 5, 6, 7, 8, 9
    got = {
        (int(tree.token[0, i]), int(tree.token[0, int(tree.parent[0, i])]), float(tree.score[0, i]))
        for i in range(1, n)
    }
    f = lambda x: float(torch.tensor(x, dtype=torch.float32))  # noqa: E731
    assert got == {
        (5, 4, f(-0.1)),
        (8, 5, f(f(-0.1) + f(-0.5))),
        (6, 5, f(f(-0.1) + f(-1.0))),
        (9, 8, f(f(f(-0.1) + f(-0.5)) + f(-0.25))),
        (7, 6, f(f(f(-0.1) + f(-1.0)) + f(-1.5))),  # max(-2.0, -1.5)
    }
    # Budget 2: the two best prefixes (5, then 5-8).
    small = ops.d2sd_select(trunk, tlp, boundary, branch, blp, 2, torch.tensor([4]))
    assert small.token[0].tolist() == [4, 5, 8]
    assert torch.equal(small.score, tree.score[:, :3])


def test_select_without_branches_is_the_first_draft_chain() -> None:
    trunk = torch.tensor([[3, 1, 4, 1, 5]])
    tlp = -torch.rand(1, 5)
    empty = torch.zeros((1, 0), dtype=torch.int32)
    tree = ops.d2sd_select(
        trunk,
        tlp,
        empty,
        torch.zeros((1, 0, 5), dtype=torch.long),
        torch.zeros((1, 0, 5)),
        8,
        torch.tensor([9]),
    )
    assert bool(tree.is_chain()[0]) and int(tree.num_nodes[0]) == 6
    assert tree.token[0, :6].tolist() == [9, 3, 1, 4, 1, 5]
    unused = torch.full((1, 2), -1, dtype=torch.int32)
    tree2 = ops.d2sd_select(
        trunk,
        tlp,
        unused,
        torch.zeros((1, 2, 5), dtype=torch.long),
        torch.zeros((1, 2, 5)),
        8,
        torch.tensor([9]),
    )
    assert_same_tree(tree, tree2)


@pytest.mark.parametrize("seed", range(60))
def test_select_matches_reference_and_rows(seed: int) -> None:
    B, L1, L2 = 1 + seed % 3, 1 + seed % 9, 1 + (seed * 5) % 11
    K, V = seed % 6, [2, 3, 50][seed % 3]
    budget = [1, 3, 17, 200][(seed // 3) % 4]
    args = _case(seed, B, L1, L2, K, V)
    tree = ops.d2sd_select(*args[:5], budget, args[5])
    want = ref.d2sd_select(*args[:5], budget, args[5])
    assert_same_tree(tree, want)
    assert_tree_invariants(tree)
    assert tree.max_depth == max(L1, L2)
    trunk_token, _, boundary, branch_token, _, _ = args
    for b in range(B):
        prefixes = {
            tuple(r[:d])
            for r in _rows(trunk_token, boundary, branch_token, b)
            for d in range(1, len(r) + 1)
        }
        paths = _paths(tree, b)
        assert paths <= prefixes  # every node is a prefix of some row
        assert len(paths) == int(tree.num_nodes[b]) - 1  # trie: each prefix once
        if budget >= len(prefixes):
            assert paths == prefixes  # a large budget verifies every row whole


def test_select_int32_and_int64_agree() -> None:
    args = _case(7, 2, 6, 8, 4, 5)
    a = ops.d2sd_select(*args[:5], 30, args[5])
    i32 = [t.to(torch.int32) if not t.is_floating_point() else t for t in args]
    assert_same_tree(a, ops.d2sd_select(*i32[:5], 30, i32[5]))


# ---- errors -------------------------------------------------------------------------------


def test_boundaries_errors() -> None:
    with pytest.raises(ValueError, match="trunk_logprob"):
        ops.d2sd_boundaries(torch.tensor([[float("nan"), -1.0]]), 1)
    with pytest.raises(ValueError, match="trunk_logprob"):
        ops.d2sd_boundaries(torch.tensor([[0.5, -1.0]]), 1)
    with pytest.raises(ValueError, match="boundary: expected K"):
        ops.d2sd_boundaries(torch.tensor([[-0.5, -1.0]]), 3)
    with pytest.raises(ValueError, match="boundary: expected K"):
        ops.d2sd_boundaries(torch.tensor([[-0.5, -1.0]]), 0)
    with pytest.raises((TypeError, ValueError), match="trunk_logprob"):
        ops.d2sd_boundaries(torch.tensor([[-0.5, -1.0]], dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="trunk_logprob"):
        ops.d2sd_boundaries(torch.tensor([-0.5, -1.0]), 1)


def test_select_errors() -> None:
    trunk, tlp, boundary, branch, blp, _ = _case(1, 1, 4, 4, 2, 9)
    boundary = torch.tensor([[0, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"boundary: expected -1 .* found 4"):
        ops.d2sd_select(trunk, tlp, torch.tensor([[0, 4]], dtype=torch.int32), branch, blp, 8)
    with pytest.raises(ValueError, match=r"boundary: expected -1 .* found -2"):
        ops.d2sd_select(trunk, tlp, torch.tensor([[0, -2]], dtype=torch.int32), branch, blp, 8)
    bad = blp.clone()
    bad[0, 1, 3] = float("inf")
    with pytest.raises(ValueError, match="branch_logprob"):
        ops.d2sd_select(trunk, tlp, boundary, branch, bad, 8)
    bad = blp.clone()
    bad[0, 1, 0] = float("nan")  # before the boundary: ignored
    ops.d2sd_select(trunk, tlp, boundary, branch, bad, 8)
    with pytest.raises(ValueError, match="trunk_logprob"):
        ops.d2sd_select(trunk, tlp.abs() + 1, boundary, branch, blp, 8)
    with pytest.raises(ValueError, match="branch_token"):
        ops.d2sd_select(trunk, tlp, boundary, branch - 100, blp, 8)
    with pytest.raises(ValueError, match="trunk_token"):
        ops.d2sd_select(trunk[:, :3], tlp, boundary, branch, blp, 8)
    with pytest.raises(ValueError, match="branch_logprob"):
        ops.d2sd_select(trunk, tlp, boundary, branch, blp[:, :1], 8)
    with pytest.raises(ValueError, match="budget"):
        ops.d2sd_select(trunk, tlp, boundary, branch, blp, 0)
    with pytest.raises(ValueError, match="root_token"):
        ops.d2sd_select(trunk, tlp, boundary, branch, blp, 8, torch.tensor([1, 2]))
    with pytest.raises((TypeError, ValueError), match="branch_logprob"):
        ops.d2sd_select(trunk, tlp, boundary, branch, blp.double(), 8)


def test_policy_reads_no_host_value() -> None:
    """redraft_blocks and select stay on the logits' device: no Python-level host read (on
    CUDA tests/ops/test_cuda_d2sd.py also sets the CUDA sync debug mode to "error")."""
    from tests.conftest import random_logits

    from difftree_rt.engine.runner import forbid_host_sync
    from difftree_rt.policies import PolicyInput
    from difftree_rt.policies.d2sd import D2SDPolicy

    gen = torch.Generator().manual_seed(0)
    policy = D2SDPolicy(budget=40, k=4)
    inputs = PolicyInput(draft_logits=random_logits(gen, 1, 15, 300), root_token=torch.tensor([3]))
    with forbid_host_sync():
        blocks = policy.redraft_blocks(inputs, 16, 299)
    R = blocks.shape[1]
    inputs.branch_logits = random_logits(gen, R, 15, 300).reshape(1, R, 15, 300)
    with forbid_host_sync():
        tree = policy.select(inputs)
    assert_tree_invariants(tree)
