"""Plain-Python reference of the D²SD ops (``difftree_rt.ops.d2sd_boundaries`` / ``d2sd_select``),
bit-identical to cpu/d2sd.cpp; tests only.

Vocabulary: B batch, L1 first-draft depth, K branches, L2 branch depth.

The boundary score uses Python floats (IEEE double) and ``math`` (the same libm as the C++
core), one operation per step in the same order. The joint tree is built as an explicit trie
of the K + 1 rows and handed to the TAPS reference selector, the frontier-scan form of the
pool selector both ops share.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..tree import DraftTree
from .taps import taps_select

__all__ = ["d2sd_boundaries", "d2sd_pool", "d2sd_select"]


def _log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0 (-inf at 0)."""
    if x > -0.6931471805599453:
        e = math.expm1(x)
        return math.log(-e) if e != 0.0 else float("-inf")
    return math.log1p(-math.exp(x))


def d2sd_boundaries(trunk_logprob: Tensor, k: int = 4) -> Tensor:
    """int32 ``[B, k]``: the top-k boundaries i by ``log r(i)``, ties to the smaller i."""
    B, L = trunk_logprob.shape
    out = torch.empty((B, k), dtype=torch.int32)
    for b in range(B):
        lp = [float(x) for x in trunk_logprob[b].tolist()]
        scores = []
        prefix = 0.0
        for i in range(L):
            scores.append(prefix + _log1mexp(lp[i]))
            prefix = prefix + lp[i]
        order = sorted(range(L), key=lambda i: (-scores[i], i))
        out[b] = torch.tensor(order[:k], dtype=torch.int32)
    return out


def d2sd_pool(
    trunk_token: Tensor,
    trunk_logprob: Tensor,
    boundary: Tensor,
    branch_token: Tensor,
    branch_logprob: Tensor,
    root: int,
    b: int,
) -> tuple[list[int], list[int], list[float]]:
    """Request b's trie of the K + 1 rows: (token, parent, edge score) per pool row, row 0 the
    root, rows in creation order; an edge keeps the max log-prob of the rows through it."""
    token, parent, edge = [root], [-1], [0.0]
    children: dict[tuple[int, int], int] = {}

    def add(cur: int, tok: int, lp: float) -> int:
        node = children.get((cur, tok))
        if node is None:
            node = len(token)
            children[(cur, tok)] = node
            token.append(tok)
            parent.append(cur)
            edge.append(lp)
        else:
            edge[node] = max(edge[node], lp)
        return node

    cur = 0
    for j in range(trunk_token.shape[1]):
        cur = add(cur, int(trunk_token[b, j]), float(trunk_logprob[b, j]))
    for k in range(boundary.shape[1]):
        i = int(boundary[b, k])
        if i < 0:
            continue
        cur = i  # the first-draft node at depth i
        for j in range(i, branch_token.shape[2]):
            cur = add(cur, int(branch_token[b, k, j]), float(branch_logprob[b, k, j]))
    return token, parent, edge


def d2sd_select(
    trunk_token: Tensor,
    trunk_logprob: Tensor,
    boundary: Tensor,
    branch_token: Tensor,
    branch_logprob: Tensor,
    budget: int,
    root_token: Tensor | None = None,
) -> DraftTree:
    B = trunk_token.shape[0]
    pools = [
        d2sd_pool(
            trunk_token,
            trunk_logprob,
            boundary,
            branch_token,
            branch_logprob,
            -1 if root_token is None else int(root_token[b]),
            b,
        )
        for b in range(B)
    ]
    P1 = max(len(p[0]) for p in pools)
    pool_token = torch.zeros((B, P1), dtype=torch.int64)
    pool_parent = torch.zeros((B, P1), dtype=torch.int64)
    log_qc = torch.zeros((B, P1), dtype=torch.float32)
    for b, (tok, par, edge) in enumerate(pools):
        n = len(tok)
        pool_token[b, :n] = torch.tensor(tok)
        pool_parent[b, :n] = torch.tensor(par)
        log_qc[b, :n] = torch.from_numpy(np.asarray(edge, dtype=np.float32))
    pool_size = torch.tensor([len(p[0]) for p in pools])
    depth = max(trunk_logprob.shape[1], branch_logprob.shape[2])
    return taps_select(pool_token, pool_parent, pool_size, log_qc, budget, max_depth=depth)
