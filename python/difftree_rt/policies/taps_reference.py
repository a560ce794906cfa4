"""Plain-Python reference of ``difftree_rt.ops.taps_select`` (bit-identical; tests only).

A different form from the C++ heap: at every step scan the whole frontier (pool children of
the selected nodes) for the minimum of the normative key (-reach, depth, parent's output index,
pool index). O(budget x frontier).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..reference import tree_from_parents
from ..tree import DraftTree

__all__ = ["taps_select"]


def taps_select(
    pool_token: Tensor,
    pool_parent: Tensor,
    pool_size: Tensor,
    log_qc: Tensor,
    budget: int,
    *,
    max_depth: int,
) -> DraftTree:
    B = pool_token.shape[0]
    N = budget + 1
    token = torch.full((B, N), -1, dtype=torch.int32)
    parent = torch.full((B, N), -1, dtype=torch.int32)
    depth = torch.zeros((B, N), dtype=torch.int32)
    score = torch.full((B, N), float("-inf"), dtype=torch.float32)
    num_nodes = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        n = int(pool_size[b])
        par = [int(p) for p in pool_parent[b, :n]]
        lq = [np.float32(x) for x in log_qc[b, :n].tolist()]
        children: list[list[int]] = [[] for _ in range(n)]
        for i in range(1, n):
            children[par[i]].append(i)
        sel_score = [np.float32(0.0)]
        sel_depth = [0]
        token[b, 0] = int(pool_token[b, 0])
        parent[b, 0], depth[b, 0], score[b, 0] = -1, 0, 0.0
        frontier = [(c, 0) for c in children[0]]  # (pool index, output parent)
        m = 1
        while m < N and frontier:
            keys = [
                (-float(np.float32(sel_score[op] + lq[c])), sel_depth[op] + 1, op, c)
                for c, op in frontier
            ]
            best = frontier[keys.index(min(keys))]
            frontier.remove(best)
            c, op = best
            s = np.float32(sel_score[op] + lq[c])
            token[b, m] = int(pool_token[b, c])
            parent[b, m] = op
            depth[b, m] = sel_depth[op] + 1
            score[b, m] = float(s)
            sel_score.append(s)
            sel_depth.append(sel_depth[op] + 1)
            frontier.extend((cc, m) for cc in children[c])
            m += 1
        num_nodes[b] = m
    return tree_from_parents(token, parent, depth, score, num_nodes, max_depth)
