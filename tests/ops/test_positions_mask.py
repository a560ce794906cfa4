"""tree_positions and the dense attention mask built from ``anc``."""

from __future__ import annotations

import torch
from tests.conftest import random_logits

from difftree_rt import ops


def test_positions() -> None:
    gen = torch.Generator().manual_seed(0)
    tree = ops.ddtree_select(random_logits(gen, 2, 5, 20), 30)
    pos = ops.tree_positions(tree, torch.tensor([7, 11]))
    assert pos.dtype == torch.int64
    assert torch.equal(pos, torch.tensor([[7], [11]]) + tree.depth.long())
    assert torch.equal(ops.tree_positions(tree, 3), 3 + tree.depth.long())


def test_mask_matches_parent_walk() -> None:
    gen = torch.Generator().manual_seed(1)
    tree = ops.ddtree_select(random_logits(gen, 2, 6, 9), 45)
    base = torch.tensor([4, 10])
    kv_len = 10 + 46 + 3
    mask = ops.tree_attention_mask(tree, base, kv_len=kv_len)
    assert mask.shape == (2, 1, 46, kv_len) and mask.dtype == torch.bool
    for b in range(2):
        n = int(tree.num_nodes[b])
        for i in range(46):
            visible = set(range(int(base[b])))
            j = i
            if i < n:
                while j != -1:
                    visible.add(int(base[b]) + j)
                    j = int(tree.parent[b, j])
            else:
                visible.add(int(base[b]) + i)  # padding rows: only themselves
            got = set(torch.nonzero(mask[b, 0, i]).flatten().tolist())
            assert got == visible, (b, i)


def test_additive_mask() -> None:
    tree = ops.ddtree_select(torch.randn(1, 3, 5), 6)
    add = ops.tree_attention_mask(tree, 2, dtype=torch.float32)
    boolean = ops.tree_attention_mask(tree, 2)
    assert add.shape == boolean.shape == (1, 1, 7, 2 + 7)
    assert torch.equal(add == 0, boolean)
    assert torch.isneginf(add[~boolean]).all()


def test_chain_mask_is_causal() -> None:
    tree = ops.ddtree_select_from_candidates(
        torch.tensor([[[1], [2], [3]]]), torch.tensor([[[-0.1], [-0.2], [-0.3]]]), 3
    )
    mask = ops.tree_attention_mask(tree, 5)[0, 0]
    causal = torch.ones(4, 9, dtype=torch.bool).tril(diagonal=5)
    assert torch.equal(mask, causal)
