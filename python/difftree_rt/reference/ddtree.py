"""References of the DDTree selectors (``difftree_rt.ops.ddtree_select``,
``ddtree_select_from_candidates``) and :func:`tree_from_parents`, the tree builder every
reference selector shares.

DDTree here uses the *parallel* form (a beam of width ``budget`` per depth, then a global top
``budget``), while the C++ core uses the heap form, so agreement checks two algorithms.

Vocabulary: B batch, L draft depth, K candidates per depth, N tree capacity (budget + 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tree import MAX_BUDGET, DraftTree, anc_words
from .topk import topk_logprobs

__all__ = ["ddtree_select", "ddtree_select_from_candidates", "tree_from_parents"]


def tree_from_parents(
    token: Tensor, parent: Tensor, depth: Tensor, score: Tensor, num_nodes: Tensor, max_depth: int
) -> DraftTree:
    """Build a :class:`DraftTree` from per-node arrays (``[B, N]``, valid rows first, parents
    before children), deriving links and ``anc`` and writing the padding rows."""
    B, N = token.shape
    W = anc_words(N)
    token, parent, depth, score = (t.clone() for t in (token, parent, depth, score))
    first_child = torch.full((B, N), -1, dtype=torch.int32)
    next_sibling = torch.full((B, N), -1, dtype=torch.int32)
    anc = torch.zeros((B, N, W), dtype=torch.int64)  # built in int64, stored as int32 bits
    for b in range(B):
        n = int(num_nodes[b])
        last_child: dict[int, int] = {}
        for i in range(N):
            if i >= n:  # padding
                token[b, i] = parent[b, i] = -1
                depth[b, i] = 0
                score[b, i] = float("-inf")
            elif i > 0:
                p = int(parent[b, i])
                if p in last_child:
                    next_sibling[b, last_child[p]] = i
                else:
                    first_child[b, p] = i
                last_child[p] = i
                anc[b, i] = anc[b, p]
            anc[b, i, i // 32] |= 1 << (i % 32)
    anc32 = torch.where(anc >= 2**31, anc - 2**32, anc).to(torch.int32)
    return DraftTree(
        token.to(torch.int32),
        parent.to(torch.int32),
        depth.to(torch.int32),
        score.to(torch.float32),
        first_child,
        next_sibling,
        anc32,
        num_nodes.to(torch.int32).clone(),
        max_depth=max_depth,
    )


def ddtree_select_from_candidates(
    cand_token: Tensor, cand_logprob: Tensor, budget: int, root_token: Tensor | None = None
) -> DraftTree:
    """Reference of :func:`difftree_rt.ops.ddtree_select_from_candidates` (parallel form).

    Order: higher score, then smaller depth, then earlier parent, then smaller rank. Within a depth
    the beam is kept in that order, so a candidate's (parent position, rank) is its flat index in
    the ``[beam, K]`` grid and a *stable* descending sort by score realises the whole order.
    """
    if not 1 <= budget <= MAX_BUDGET:
        raise ValueError(f"budget: expected a value in [1, {MAX_BUDGET}], got {budget}")
    B, L, K = cand_logprob.shape
    N = budget + 1
    out_token = torch.full((B, N), -1, dtype=torch.int64)
    out_parent = torch.full((B, N), -1, dtype=torch.int64)
    out_depth = torch.zeros((B, N), dtype=torch.int64)
    out_score = torch.zeros((B, N), dtype=torch.float32)
    num_nodes = torch.ones(B, dtype=torch.int64)
    for b in range(B):
        if root_token is not None:
            out_token[b, 0] = int(root_token[b])
        # levels[d] = (score [M], parent position in level d-1 [M], rank [M]) in within-depth order
        levels: list[tuple[Tensor, Tensor, Tensor]] = []
        prev_score = torch.zeros(1, dtype=torch.float32)
        for d in range(L):
            grid = prev_score[:, None] + cand_logprob[b, d][None, :]  # fp32 adds, [M, K]
            flat = grid.reshape(-1)
            order = torch.sort(flat, descending=True, stable=True).indices[:budget]
            levels.append((flat[order], order // K, order % K))
            prev_score = flat[order]
        if not levels:
            continue
        # Global order: concatenate depth-major (so equal scores favour shallower nodes), then a
        # stable sort by score keeps (depth, within-depth order) for ties.
        scores = torch.cat([lv[0] for lv in levels])
        level_of = torch.cat([torch.full_like(lv[1], d) for d, lv in enumerate(levels)])
        pos_of = torch.cat([torch.arange(len(lv[0])) for lv in levels])
        chosen = torch.sort(scores, descending=True, stable=True).indices[:budget]
        node_of: dict[tuple[int, int], int] = {}
        for i, c in enumerate(chosen.tolist(), start=1):
            d, pos = int(level_of[c]), int(pos_of[c])
            lv_score, lv_parent, lv_rank = levels[d]
            node_of[(d, pos)] = i
            out_parent[b, i] = 0 if d == 0 else node_of[(d - 1, int(lv_parent[pos]))]
            out_depth[b, i] = d + 1
            out_score[b, i] = lv_score[pos]
            out_token[b, i] = int(cand_token[b, d, int(lv_rank[pos])])
        num_nodes[b] = 1 + len(chosen)
    return tree_from_parents(out_token, out_parent, out_depth, out_score, num_nodes, max_depth=L)


def ddtree_select(draft_logits: Tensor, budget: int, root_token: Tensor | None = None) -> DraftTree:
    """Reference of :func:`difftree_rt.ops.ddtree_select`."""
    k = max(1, min(budget, draft_logits.shape[-1]))
    token, logprob = topk_logprobs(draft_logits, k)
    return ddtree_select_from_candidates(token, logprob, budget, root_token)
