"""Every op is a torch.library custom op: opcheck passes and torch.compile traces through."""

from __future__ import annotations

import pytest
import torch

from difftree_rt import ops


def _tree_args():  # type: ignore[no-untyped-def]
    tree = ops.ddtree_select(torch.randn(2, 4, 11), 12)
    return tree, torch.randint(0, 11, (2, tree.capacity))


def test_opcheck_topk_logprobs() -> None:
    torch.library.opcheck(torch.ops.difftree.topk_logprobs, (torch.randn(2, 3, 17), 5))


def test_opcheck_ddtree_select() -> None:
    tok, lp = ops.topk_logprobs(torch.randn(2, 3, 17), 6)
    torch.library.opcheck(torch.ops.difftree.ddtree_select, (tok, lp, 9, torch.tensor([1, 2])))
    torch.library.opcheck(torch.ops.difftree.ddtree_select, (tok, lp, 9, None))


def test_opcheck_tree_walk() -> None:
    tree, choice = _tree_args()
    args = (*tree.arrays(), choice, 5, torch.tensor([3]), torch.tensor([4, 9]))
    torch.library.opcheck(torch.ops.difftree.tree_walk, args)


def test_opcheck_kv_commit() -> None:
    caches = [torch.randn(2, 2, 16, 8) for _ in range(4)]
    path = torch.tensor([[0, 2, 3], [0, 1, -1]])
    args = (caches, torch.tensor([1, 4]), path, torch.tensor([2, 1]))
    torch.library.opcheck(torch.ops.difftree.kv_commit, args)


@pytest.mark.slow
def test_torch_compile_round() -> None:
    """A whole select -> walk -> commit step compiles (fullgraph) and matches eager."""

    def step(logits, choice, caches, base):  # type: ignore[no-untyped-def]
        tree = ops.ddtree_select(logits, 8)
        walk = ops.tree_walk(tree, choice)
        ops.kv_commit(caches, base, walk.path, walk.accepted)
        return tree.token, walk.path, walk.accepted, walk.next_token

    logits = torch.randn(1, 4, 6)
    choice = torch.randint(0, 6, (1, 9))
    base = torch.tensor([2])
    eager_caches = [torch.randn(1, 2, 16, 4) for _ in range(2)]
    compiled_caches = [c.clone() for c in eager_caches]
    expected = step(logits, choice, eager_caches, base)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(
        logits, choice, compiled_caches, base
    )
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    for c, e in zip(compiled_caches, eager_caches):
        assert torch.equal(c, e)
