"""Invariant checks every selector's output must pass (DESIGN.md §2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from difftree_rt import DraftTree, ops


def assert_tree_invariants(tree: DraftTree) -> None:
    B, N = tree.token.shape
    W = tree.anc.shape[2]
    assert W == (N + 31) // 32
    for b in range(B):
        n = int(tree.num_nodes[b])
        assert 1 <= n <= N
        par = tree.parent[b].tolist()
        dep = tree.depth[b].tolist()
        score = tree.score[b].tolist()
        tok = tree.token[b].tolist()
        assert par[0] == -1 and dep[0] == 0
        children: dict[int, list[int]] = {}
        for i in range(1, n):
            p = par[i]
            assert 0 <= p < i, "parent < child"
            assert dep[i] == dep[p] + 1
            assert score[i] <= score[p], "scores never increase along a path"
            assert score[i] <= score[i - 1] or i == 1, "best-first order"
            children.setdefault(p, []).append(i)
        for kids in children.values():
            toks = [tok[c] for c in kids]
            assert len(set(toks)) == len(toks), "distinct sibling tokens"
        # Links: first_child / next_sibling enumerate exactly the children, in index order.
        for i in range(n):
            kids = []
            c = int(tree.first_child[b, i])
            while c != -1:
                kids.append(c)
                c = int(tree.next_sibling[b, c])
            assert kids == children.get(i, [])
        # anc: ancestor-or-self bits.
        for i in range(N):
            expected = set()
            if i < n:
                j = i
                while j != -1:
                    expected.add(j)
                    j = par[j]
            else:
                expected = {i}
            words = [w & 0xFFFFFFFF for w in tree.anc[b, i].tolist()]
            got = {w * 32 + bit for w in range(W) for bit in range(32) if words[w] >> bit & 1}
            assert got == expected, (b, i)
        # Padding rows.
        for i in range(n, N):
            assert tok[i] == -1 and par[i] == -1 and dep[i] == 0
            assert score[i] == float("-inf")
            assert int(tree.first_child[b, i]) == -1 and int(tree.next_sibling[b, i]) == -1
    assert tree.token.dtype == torch.int32 and tree.score.dtype == torch.float32


def assert_trees_identical(
    want: DraftTree, got: DraftTree | Sequence[torch.Tensor], tag: object = None
) -> None:
    """``got`` (a tree or its eight arrays, on any device) equals ``want`` bit for bit: float
    scores are compared as bits (-0.0 and the -inf padding included)."""
    arrays = got.arrays() if isinstance(got, DraftTree) else tuple(got)
    for name, w, g in zip(ops._TREE_FIELDS, want.arrays(), arrays, strict=True):
        g = g.cpu()
        if w.dtype == torch.float32:
            w, g = w.view(torch.int32), g.view(torch.int32)
        assert torch.equal(w, g.to(w.dtype)), (tag, name)
