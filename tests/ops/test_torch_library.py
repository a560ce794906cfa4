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


def test_opcheck_caddtree_select() -> None:
    tok, lp = ops.topk_logprobs(torch.randn(2, 3, 17), 6)
    verify = 1.0 + 0.05 * torch.arange(10, dtype=torch.float32).expand(2, 10).contiguous()
    args = (tok, lp, 9, torch.tensor([1, 2]), verify, torch.tensor([0.1, 0.3]))
    torch.library.opcheck(torch.ops.difftree.caddtree_select, args)


def test_opcheck_taps_select() -> None:
    token = torch.tensor([[7, 1, 2, 3, 4], [7, 5, 6, 0, 0]])
    parent = torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 1, 0, 0]])
    log_qc = torch.tensor([[0.0, -0.1, -0.7, -0.2, -1.5], [0.0, -0.3, -0.3, 0.0, 0.0]])
    args = (token, parent, torch.tensor([5, 3]), log_qc, 3)
    torch.library.opcheck(torch.ops.difftree.taps_select, args)


def test_opcheck_d2sd_ops() -> None:
    trunk = torch.tensor([[5, 6, 7]])
    tlp = torch.tensor([[-0.1, -1.0, -2.0]])
    torch.library.opcheck(torch.ops.difftree.d2sd_boundaries, (tlp, 2))
    boundary = torch.tensor([[1, 2]], dtype=torch.int32)
    branch = torch.tensor([[[0, 8, 9], [0, 0, 7]]])
    blp = torch.tensor([[[-9.0, -0.5, -0.25], [-9.0, -9.0, -1.5]]])
    args = (trunk, tlp, boundary, branch, blp, 6, torch.tensor([4]))
    torch.library.opcheck(torch.ops.difftree.d2sd_select, args)


def _presto_tables(B: int = 2):  # type: ignore[no-untyped-def]
    keys = torch.zeros(B, 64, dtype=torch.int64)
    counts = torch.zeros(B, 64, dtype=torch.int32)
    history = torch.full((B, 2), -1, dtype=torch.int64)
    ops.ngram_extend(keys, counts, history, torch.tensor([[1, 2, 1, 2], [3, 3, 4, 0]]),
                     torch.tensor([4, 3]), 3)  # fmt: skip
    return keys, counts, history


def test_opcheck_ngram_extend() -> None:
    keys, counts, history = _presto_tables()
    tokens, num = torch.tensor([[1, 5], [4, 3]]), torch.tensor([2, 1])
    torch.library.opcheck(
        torch.ops.difftree.ngram_extend, (keys, counts, history, tokens, num, 3, None)
    )
    overflow = torch.zeros(2, dtype=torch.int32)
    torch.library.opcheck(
        torch.ops.difftree.ngram_extend, (keys, counts, history, tokens, num, 3, overflow)
    )


def test_opcheck_presto_select() -> None:
    keys, counts, history = _presto_tables()
    tok, lp = ops.topk_logprobs(torch.randn(2, 3, 17), 6)
    root = torch.tensor([2, 4])
    for table in ((keys, counts), (keys[0].contiguous(), counts[0].contiguous())):
        args = (tok, lp, 9, root, history, *table, 3, 1.0, 0.5, 17)
        torch.library.opcheck(torch.ops.difftree.presto_select, args)


def test_torch_compile_presto_step() -> None:
    """Select from the tables, then extend them with the chosen path: traces (fullgraph) and
    matches eager, tables included."""

    def step(logits, keys, counts, history, emitted, num):  # type: ignore[no-untyped-def]
        tok, lp = ops.topk_logprobs(logits, 6)
        tree = ops.presto_select_from_candidates(
            tok,
            lp,
            8,
            history,
            keys,
            counts,
            order=3,
            vocab=17,
            lam=0.5,
            root_token=emitted[:, 0].contiguous(),
        )
        ops.ngram_extend(keys, counts, history, emitted, num, 3)
        return tree.token, tree.parent, tree.num_nodes

    logits = torch.randn(2, 3, 17)
    emitted, num = torch.tensor([[2, 1, 2], [4, 0, 0]]), torch.tensor([3, 1])
    eager_tables = _presto_tables()
    compiled_tables = tuple(t.clone() for t in eager_tables)
    expected = step(logits, *eager_tables, emitted, num)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(
        logits, *compiled_tables, emitted, num
    )
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    for c, e in zip(compiled_tables, eager_tables):
        assert torch.equal(c, e)


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
