"""Plain-Python/PyTorch references of the policy selectors (CaDDTree, PRESTO, the n-gram counts):
readable, slow, and the definition the C++ core matches bit for bit (``tests/policies``).

Vocabulary: B batch, L draft depth, K candidates per depth, N tree capacity (budget + 1).

Floating point is spelled out: double arithmetic is Python ``float`` (one IEEE operation per
expression step, ``math.exp``/``math.log`` from the same libm as the core), fp32 values are
``numpy.float32`` (single roundings), and every sum runs in the core's order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..tree import DraftTree
from .ddtree import ddtree_select_from_candidates, tree_from_parents
from .topk import MIN_LOGPROB

__all__ = [
    "NGramCounts",
    "caddtree_select_from_candidates",
    "caddtree_size",
    "presto_select_from_candidates",
]

_MIN_LOGPROB = np.float32(MIN_LOGPROB)


# ---- CaDDTree --------------------------------------------------------------------------------


def caddtree_size(
    score: Sequence[float], num_nodes: int, verify_cost: Sequence[float], draft: float
) -> int:
    """Draft nodes kept: admit node n + 1 while θ(n + 1) > θ(n) (ALGORITHMS.md §5)."""
    cd = float(draft)
    phi = 0.0
    best = 1.0 / (cd + float(verify_cost[0]))
    n = 0
    while n + 1 < num_nodes:
        next_phi = phi + math.exp(float(score[n + 1]))
        theta = (1.0 + next_phi) / (cd + float(verify_cost[n + 1]))
        if not theta > best:
            break
        phi, best, n = next_phi, theta, n + 1
    return n


def caddtree_select_from_candidates(
    cand_token: Tensor,
    cand_logprob: Tensor,
    max_budget: int,
    verify_cost: Tensor,
    draft_cost: Tensor,
    root_token: Tensor | None = None,
) -> DraftTree:
    """Reference of :func:`difftree_rt.ops.caddtree_select_from_candidates`: the reference
    DDTree (parallel form) at ``max_budget``, then the θ cut."""
    full = ddtree_select_from_candidates(cand_token, cand_logprob, max_budget, root_token)
    num = full.num_nodes.clone()
    for b in range(full.batch_size):
        n = caddtree_size(
            full.score[b].tolist(),
            int(full.num_nodes[b]),
            verify_cost[b].tolist(),
            float(draft_cost[b]),
        )
        num[b] = n + 1
    return tree_from_parents(
        full.token, full.parent, full.depth, full.score, num, max_depth=full.max_depth
    )


# ---- PRESTO ----------------------------------------------------------------------------------


class NGramCounts:
    """Exact n-gram counts of a stream in dictionaries (the reference of the core's hashed
    table): ``full[(h, t)] = c(h, t)`` and ``ctx[h] = c(h)`` for contexts h of length 0..n-1."""

    def __init__(self, stream: Sequence[int], order: int) -> None:
        self.order = order
        self.full: Counter[tuple[tuple[int, ...], int]] = Counter()
        self.ctx: Counter[tuple[int, ...]] = Counter()
        toks = [int(t) for t in stream]
        for i in range(len(toks)):
            for m in range(1, order + 1):
                if i - m + 1 < 0:
                    break
                h = tuple(toks[i - m + 1 : i])
                self.full[(h, toks[i])] += 1
                self.ctx[h] += 1

    def prob(self, hist: Sequence[int], t: int, alpha: float, vocab: int) -> float:
        """p_a(t | hist): hist is the node's history, newest last, -1 = unavailable."""
        p = 1.0 / float(vocab)
        c = len(hist)
        for m in range(1, self.order + 1):
            n_ctx = m - 1
            if n_ctx > c or (n_ctx > 0 and hist[c - n_ctx] < 0):
                break
            h = tuple(hist[c - n_ctx :]) if n_ctx > 0 else ()
            ch = float(self.ctx.get(h, 0))
            if ch == 0.0:
                break
            num = float(self.full.get((h, int(t)), 0)) + alpha * p
            den = ch + alpha
            p = num / den
        return p


#: Lanes of the normaliser's sum (src/common/ngram_key.h: the CUDA warp reduction's order).
SUM_LANES = 32


def _lane_sum(values: Sequence[float]) -> float:
    """Σ values in the normative lane order: 32 sequential partial sums over r = l, l + 32, ...,
    then folded pairwise (partial[l] += partial[l + o] for o = 16, 8, 4, 2, 1)."""
    part = [0.0] * SUM_LANES
    for r, v in enumerate(values):
        part[r % SUM_LANES] = part[r % SUM_LANES] + v
    o = SUM_LANES // 2
    while o >= 1:
        for lane in range(o):
            part[lane] = part[lane] + part[lane + o]
        o //= 2
    return part[0]


def _edges(lp: Sequence[float], probs: Sequence[float], lam: float) -> list[tuple[float, int]]:
    """Sorted (edge score fp32, rank) of one parent's children: score desc, rank asc."""
    k = len(lp)
    if lam == 0.0:
        edges = [np.float32(v) for v in lp]
    else:
        qs = [math.exp(float(lp[r])) for r in range(k)]
        ws = [qs[r] * math.exp(lam * math.log(probs[r])) for r in range(k)]
        tilted, mass = _lane_sum(ws), _lane_sum(qs)
        rest = 1.0 - mass
        z = tilted + rest if rest > 0.0 else tilted
        log_z = math.log(z)
        edges = []
        for r in range(k):
            raw = float(lp[r]) + lam * math.log(probs[r])
            e = np.float32(raw - log_z)
            e = min(max(e, _MIN_LOGPROB), np.float32(0.0))
            edges.append(np.float32(e))
    return sorted(((e, r) for r, e in enumerate(edges)), key=lambda er: (-er[0], er[1]))


def _presto_one(
    lp: list[list[float]],
    tok: list[list[int]],
    budget: int,
    context: list[int],
    model: NGramCounts,
    vocab: int,
    lam: float,
    alpha: float,
) -> list[tuple[int, int, int, float]]:
    """One request: the admitted nodes as (token, parent, depth, score) after the root."""
    L, K = len(lp), len(lp[0]) if lp else 0
    scores = [np.float32(0.0)]
    depths = [0]
    hists = [list(context)]
    lists: list[list[tuple[float, int]]] = []
    next_pos: list[int] = []
    nodes: list[tuple[int, int, int, float]] = []

    def admit(u: int) -> None:
        d = depths[u]
        if d >= L:
            lists.append([])
            next_pos.append(K)
            return
        probs = [model.prob(hists[u], tok[d][r], alpha, vocab) for r in range(K)]
        lists.append(_edges(lp[d], probs, lam))
        next_pos.append(0)

    admit(0)
    while len(scores) < budget + 1:
        best = None
        for u in range(len(scores)):
            if next_pos[u] >= K:
                continue
            e, _ = lists[u][next_pos[u]]
            s = np.float32(scores[u] + e)
            key = (-s, depths[u] + 1, u, next_pos[u])
            if best is None or key < best[0]:
                best = (key, u, s)
        if best is None:
            break
        _, u, s = best
        _, r = lists[u][next_pos[u]]
        next_pos[u] += 1
        t = tok[depths[u]][r]
        nodes.append((t, u, depths[u] + 1, float(s)))
        scores.append(s)
        depths.append(depths[u] + 1)
        hists.append((hists[u] + [t])[1:] if context else [])
        admit(len(scores) - 1)
    return nodes


def presto_select_from_candidates(
    cand_token: Tensor,
    cand_logprob: Tensor,
    budget: int,
    context: Tensor,
    counts: Sequence[NGramCounts],
    *,
    vocab: int,
    lam: float = 0.2,
    alpha: float = 1.0,
    root_token: Tensor | None = None,
) -> DraftTree:
    """Reference of :func:`difftree_rt.ops.presto_select_from_candidates`.

    Best-first by exhaustive frontier scan (the core uses a heap): each step admits the best
    frontier candidate under (score desc, depth asc, parent asc, position asc), where a
    parent's children are ordered by (edge score desc, rank asc).

    Args:
        context: ``[B, order - 1]`` as for the op. counts: per request, the n-gram counts of the
            stream the table was built from (:class:`NGramCounts`).
    """
    B, L, _ = cand_logprob.shape
    N = budget + 1
    out_token = torch.full((B, N), -1, dtype=torch.int64)
    out_parent = torch.full((B, N), -1, dtype=torch.int64)
    out_depth = torch.zeros((B, N), dtype=torch.int64)
    out_score = torch.zeros((B, N), dtype=torch.float32)
    num_nodes = torch.ones(B, dtype=torch.int64)
    for b in range(B):
        if root_token is not None:
            out_token[b, 0] = int(root_token[b])
        nodes = _presto_one(
            cand_logprob[b].tolist(),
            cand_token[b].tolist(),
            budget,
            [int(v) for v in context[b].tolist()],
            counts[b],
            vocab,
            lam,
            alpha,
        )
        for i, (t, u, d, s) in enumerate(nodes, start=1):
            out_token[b, i], out_parent[b, i], out_depth[b, i], out_score[b, i] = t, u, d, s
        num_nodes[b] = 1 + len(nodes)
    return tree_from_parents(out_token, out_parent, out_depth, out_score, num_nodes, max_depth=L)
