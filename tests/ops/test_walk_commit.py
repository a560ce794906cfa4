"""tree_walk and kv_commit: hand-built cases, random cases against the reference, overlap."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import random_logits

from difftree_rt import ops, reference


def _tree(parents: list[int], tokens: list[int], max_depth: int = 8):  # type: ignore[no-untyped-def]
    N = len(parents)
    depth = [0] * N
    for i in range(1, N):
        depth[i] = depth[parents[i]] + 1
    t = lambda v: torch.tensor([v])  # noqa: E731
    return reference.tree_from_parents(
        t(tokens), t(parents), t(depth), torch.zeros(1, N), torch.tensor([N]), max_depth
    )


#        0(root 9)
#       /         \
#     1(5)        2(6)
#     /   \          \
#   3(7)  4(8)       5(7)
PARENTS = [-1, 0, 0, 1, 1, 2]
TOKENS = [9, 5, 6, 7, 8, 7]


def test_greedy_walk_follows_branch() -> None:
    tree = _tree(PARENTS, TOKENS, max_depth=2)
    choice = torch.tensor([[6, 0, 7, 0, 0, 42]])  # root -> 2 (6) -> 5 (7) -> bonus 42
    r = ops.tree_walk(tree, choice)
    assert r.path.tolist() == [[0, 2, 5]]
    assert r.accepted.tolist() == [2] and r.next_token.tolist() == [42]
    assert r.done.tolist() == [False]


def test_no_child_matches() -> None:
    tree = _tree(PARENTS, TOKENS, max_depth=2)
    r = ops.tree_walk(tree, torch.tensor([[3, 0, 0, 0, 0, 0]]))
    assert r.path.tolist() == [[0, -1, -1]]
    assert r.accepted.tolist() == [0] and r.next_token.tolist() == [3]


def test_stop_token_inside_path() -> None:
    tree = _tree(PARENTS, TOKENS, max_depth=2)
    choice = torch.tensor([[5, 8, 0, 0, 1, 0]])  # root -> 1 (5) -> 4 (8) -> bonus 1
    r = ops.tree_walk(tree, choice, stop_token_ids=[5])
    assert r.path.tolist() == [[0, 1, -1]]
    assert r.accepted.tolist() == [1] and r.next_token.tolist() == [-1]
    assert r.done.tolist() == [True]


def test_stop_token_as_bonus() -> None:
    tree = _tree(PARENTS, TOKENS, max_depth=2)
    choice = torch.tensor([[5, 8, 0, 0, 1, 0]])
    r = ops.tree_walk(tree, choice, stop_token_ids=torch.tensor([1, 100]))
    assert r.accepted.tolist() == [2] and r.next_token.tolist() == [1] and r.done.tolist() == [True]


@pytest.mark.parametrize(
    ("cap", "acc", "nxt", "done"),
    [(0, 0, -1, True), (1, 1, -1, True), (2, 2, -1, True), (3, 2, 1, True), (4, 2, 1, False)],
)
def test_remaining_cap(cap: int, acc: int, nxt: int, done: bool) -> None:
    tree = _tree(PARENTS, TOKENS, max_depth=2)
    choice = torch.tensor([[5, 8, 0, 0, 1, 0]])  # emits 5, 8, then bonus 1
    r = ops.tree_walk(tree, choice, remaining=torch.tensor([cap]))
    assert r.accepted.tolist() == [acc] and r.next_token.tolist() == [nxt]
    assert r.done.tolist() == [done]


@pytest.mark.parametrize("seed", range(300))
def test_walk_matches_reference_random(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, L, V = 1 + seed % 4, 1 + seed % 8, 2 + seed % 6  # small V: choices often match
    tree = ops.ddtree_select(random_logits(gen, B, L, V), 1 + seed % 50)
    choice = torch.randint(0, V, (B, tree.capacity), generator=gen)
    stops = [] if seed % 3 else torch.randint(0, V, (2,), generator=gen).tolist()
    remaining = None if seed % 2 else torch.randint(0, L + 3, (B,), generator=gen)
    got = ops.tree_walk(tree, choice, stop_token_ids=stops, remaining=remaining)
    ref = reference.tree_walk(tree, choice, stop_token_ids=stops, remaining=remaining)
    for g, r in zip(got, ref):
        assert torch.equal(g, r)
    # The accepted path really is a root-to-node path of matching tokens.
    for b in range(B):
        for j in range(1, int(got.accepted[b]) + 1):
            node, prev = int(got.path[b, j]), int(got.path[b, j - 1])
            assert int(tree.parent[b, node]) == prev
            assert int(tree.token[b, node]) == int(choice[b, prev])


def test_walk_rejects_malformed_tree() -> None:
    tree = _tree(PARENTS, TOKENS, max_depth=2)
    bad = tree.next_sibling.clone()
    bad[0, 2] = 1  # sibling link backwards: would loop forever if followed blindly
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"tree\.next_sibling: malformed tree"):
        ops.tree_walk(replace(tree, next_sibling=bad), torch.tensor([[0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"node_choice: expected shape \[B, N\]"):
        ops.tree_walk(tree, torch.tensor([[0, 0]]))


# ---- kv_commit ------------------------------------------------------------------------------


def _caches(gen: torch.Generator, n: int, B: int, H: int, S: int, D: int, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    return [torch.randn((B, H, S, D), generator=gen).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("path", [[0, 2, 3, 5], [0, 1, 3], [0, 4], [0, 1, 2, 3]])
def test_commit_overlapping_rows(path: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    caches = _caches(gen, 4, 1, 2, 16, 8, torch.float32)
    before = [c.clone() for c in caches]
    base = 3
    acc = len(path) - 1
    ops.kv_commit(caches, base, torch.tensor([path]), torch.tensor([acc]))
    for c, c0 in zip(caches, before):
        for j, a in enumerate(path):
            assert torch.equal(c[0, :, base + j], c0[0, :, base + a])
        assert torch.equal(c[0, :, : base + 1], c0[0, :, : base + 1])  # prefix untouched
        assert torch.equal(c[0, :, base + acc + 1 :], c0[0, :, base + acc + 1 :])


@pytest.mark.parametrize("seed", range(100))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_commit_matches_reference_random(seed: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, H, D, S = 1 + seed % 3, 1 + seed % 4, [4, 8, 64, 128][seed % 4], 40
    P = 1 + seed % 10
    paths, accs = [], []
    for _ in range(B):
        acc = int(torch.randint(0, P, (), generator=gen))
        nodes = sorted(torch.randperm(20, generator=gen)[:acc].add(1).tolist())
        paths.append([0, *nodes] + [-1] * (P - 1 - acc))
        accs.append(acc)
    path, accepted = torch.tensor(paths), torch.tensor(accs)
    base = torch.randint(0, 15, (B,), generator=gen)
    caches = _caches(gen, 3, B, H, S, D, dtype)
    expected = [c.clone() for c in caches]
    reference.kv_commit(expected, base, path, accepted)
    ops.kv_commit(caches, base, path.to(torch.int32), accepted)
    for c, e in zip(caches, expected):
        assert torch.equal(c, e)


def test_commit_rejects_bad_paths_and_leaves_caches_intact() -> None:
    caches = [torch.randn(2, 2, 10, 4) for _ in range(2)]
    before = [c.clone() for c in caches]
    base = torch.tensor([0, 2])
    cases = [
        ([[0, 2, 1], [0, 1, 2]], [2, 2], "path: expected path"),
        ([[1, 2, 3], [0, 1, 2]], [2, 2], "path: expected path"),
        ([[0, 2, 3], [0, 3, 9]], [2, 2], "outside the caches"),
        ([[0, 2, 3], [0, 1, 2]], [3, 0], r"accepted: expected values in \[0, 2\]"),
    ]
    for path, acc, match in cases:
        with pytest.raises(ValueError, match=match):
            ops.kv_commit(caches, base, torch.tensor(path), torch.tensor(acc))
    for c, c0 in zip(caches, before):
        assert torch.equal(c, c0)
    with pytest.raises(ValueError, match=r"caches\[1\]: expected shape"):
        ops.kv_commit(
            [caches[0], torch.zeros(2, 2, 9, 4)],
            base,
            torch.zeros(2, 1, dtype=torch.int64),
            torch.zeros(2, dtype=torch.int64),
        )
    with pytest.raises(TypeError, match=r"caches\[1\]: expected dtype float32"):
        ops.kv_commit(
            [caches[0], caches[1].half()],
            base,
            torch.zeros(2, 1, dtype=torch.int64),
            torch.zeros(2, dtype=torch.int64),
        )


def test_commit_then_walk_end_to_end() -> None:
    """Walk output feeds kv_commit directly (the engine's round)."""
    gen = torch.Generator().manual_seed(4)
    x = random_logits(gen, 2, 6, 4)
    tree = ops.ddtree_select(x, 30)
    choice = torch.randint(0, 4, (2, tree.capacity), generator=gen)
    walk = ops.tree_walk(tree, choice)
    base = torch.tensor([5, 9])
    caches = _caches(gen, 2, 2, 2, 64, 16, torch.float32)
    expected = [c.clone() for c in caches]
    reference.kv_commit(expected, base, walk.path, walk.accepted)
    ops.kv_commit(caches, base, walk.path, walk.accepted)
    for c, e in zip(caches, expected):
        assert torch.equal(c, e)
