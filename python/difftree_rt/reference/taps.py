"""Plain-Python reference of ``difftree_rt.ops.taps_select`` (bit-identical; tests only), and
the host-side numpy forms of the pool and the q_cond estimates that
``difftree_rt.policies.taps`` computes with device torch ops (``taps_pool`` bit-identical,
``marginal_log_qc`` exact, ``fallback_log_qc`` equal after the f32 rounding).

The selection is a different form from the C++ heap: at every step scan the whole frontier
(pool children of the selected nodes) for the minimum of the normative key (-reach, depth,
parent's output index, pool index). O(budget x frontier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..tree import DraftTree
from .ddtree import tree_from_parents

__all__ = ["TapsPool", "fallback_log_qc", "marginal_log_qc", "taps_pool", "taps_select"]


@dataclass
class TapsPool:
    """The candidate pool as :func:`taps_pool` builds it: the fields of
    ``difftree_rt.policies.taps.TapsPool`` (defined again because the oracle never imports the
    policies; tests/test_reference_layering.py checks the fields agree). The q_cond functions here
    read either kind.

    Attributes:
        token, parent, depth, rank: ``[B, P1]`` int64 (padding rows -1, -1, 0, -1).
        score: ``[B, P1]`` float32 cumulative draft log-prob (root 0, padding -inf).
        size: ``[B]`` int64 valid rows (root included).
        max_depth: L.
    """

    token: Tensor
    parent: Tensor
    depth: Tensor
    rank: Tensor
    score: Tensor
    size: Tensor
    max_depth: int


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


# ---- the pool and q_cond on the host (numpy; the former TapsPolicy implementation) ---------


def _pool_one(lp: np.ndarray, width: int, pool_size: int):
    """Beam over one request's ``[L, K]`` log-probs; returns per pool row (root excluded)
    (parent row, depth, rank, score) in the pool's order."""
    L, K = lp.shape
    if L == 0 or K == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, np.zeros(0, dtype=np.float32)
    k = min(K, width)
    nodes_score, nodes_depth, nodes_par, nodes_rank = [], [], [], []  # per depth, beam order
    prev = np.zeros(1, dtype=np.float32)
    for d in range(L):
        # (parent i, rank r) is preceded by every (i' <= i, r' <= r) (parents sorted, ranks
        # sorted, ties -> parent-major index), so only (i + 1)(r + 1) <= width can make the
        # beam: ~width log(width) candidates instead of width x k.
        per = np.minimum(width // np.arange(1, len(prev) + 1), k)
        par = np.repeat(np.arange(len(prev)), per)
        rk = np.arange(len(par)) - np.repeat(np.cumsum(per) - per, per)
        flat = prev[par] + lp[d, rk]  # fp32; (par, rk) ascending = parent-major order
        keep = np.argsort(-flat, kind="stable")[:width]
        nodes_score.append(flat[keep])
        nodes_par.append(par[keep])
        nodes_rank.append(rk[keep])
        nodes_depth.append(np.full(len(keep), d + 1))
        prev = flat[keep]
    score = np.concatenate(nodes_score)
    depth = np.concatenate(nodes_depth)
    beam_par = np.concatenate(nodes_par)
    rank = np.concatenate(nodes_rank)
    offset = np.cumsum([0] + [len(s) for s in nodes_score])  # start of each depth in `score`
    order = np.argsort(-score, kind="stable")[:pool_size]  # depth-major concat: ties -> shallower
    row = np.full(len(score), -1, dtype=np.int64)
    row[order] = np.arange(1, len(order) + 1)
    parent = np.empty(len(order), dtype=np.int64)
    for j, g in enumerate(order):
        d = depth[g]
        parent[j] = 0 if d == 1 else row[offset[d - 2] + beam_par[g]]
    assert (parent >= 0).all() and (parent < np.arange(1, len(order) + 1)).all()
    return parent, depth[order], rank[order], score[order]


def taps_pool(
    cand_token: Tensor,
    cand_logprob: Tensor,
    width: int,
    pool_size: int,
    root_token: Tensor | None = None,
) -> TapsPool:
    """The TAPS candidate pool (``difftree_rt.policies.taps.taps_pool``'s docstring) of
    ``[B, L, K]`` candidates, built on the host with numpy: per request a beam with stable
    argsorts."""
    if width < 1 or pool_size < 1:
        raise ValueError(f"width and pool_size must be >= 1, got {width}, {pool_size}")
    B, L, _ = cand_logprob.shape
    lp_all = cand_logprob.detach().cpu().to(torch.float32).numpy()
    tok_all = cand_token.detach().cpu().to(torch.int64).numpy()
    P1 = pool_size + 1
    token = np.full((B, P1), -1, dtype=np.int64)
    parent = np.full((B, P1), -1, dtype=np.int64)
    depth = np.zeros((B, P1), dtype=np.int64)
    rank = np.full((B, P1), -1, dtype=np.int64)
    score = np.full((B, P1), -np.inf, dtype=np.float32)
    size = np.zeros(B, dtype=np.int64)
    for b in range(B):
        par, dep, rk, sc = _pool_one(lp_all[b], width, pool_size)
        n = len(par) + 1
        token[b, 0] = int(root_token[b]) if root_token is not None else 0
        score[b, 0] = 0.0
        token[b, 1:n] = tok_all[b, dep - 1, rk]
        parent[b, 1:n], depth[b, 1:n], rank[b, 1:n], score[b, 1:n] = par, dep, rk, sc
        size[b] = n
    t = torch.from_numpy
    return TapsPool(t(token), t(parent), t(depth), t(rank), t(score), t(size), L)


def marginal_log_qc(pool: TapsPool, cand_logprob: Tensor) -> Tensor:
    """``log q_cond = log q_d(child)``, the draft marginal itself: reach = the DDTree score, so
    the selection is DDTree restricted to the pool (exactly DDTree when the pool contains the
    DDTree tree, e.g. ``width >= budget`` and ``pool_size >= budget``)."""
    lp = cand_logprob.detach().cpu().to(torch.float32)
    out = torch.zeros(pool.token.shape, dtype=torch.float32)
    for b in range(lp.shape[0]):
        n = int(pool.size[b])
        out[b, 1:n] = lp[b, pool.depth[b, 1:n] - 1, pool.rank[b, 1:n]]
    return out


def fallback_log_qc(pool: TapsPool, cand_logprob: Tensor) -> Tensor:
    """The training-free ``log q_cond``: draft marginals renormalised over each parent's pool
    children plus an "other" mass.

    For a pool node c at depth d with parent u, ``C(u)`` the pool children of u and
    ``tail_d = max(0, 1 - Σ_{r<K} q_d(r))`` the draft mass outside the depth's top-K lattice::

        q_cond(c | u) = q_d(c) / (Σ_{c' ∈ C(u)} q_d(c') + tail_d)

    evaluated as ``lp_c - logsumexp({lp_c' : c' ∈ C(u)} ∪ {log tail_d})`` in float64, rounded
    to float32 and clamped at 0. "Other" (continuations outside the pool given u was reached)
    keeps the tail outside the lattice only: lattice tokens the beam dropped under u are taken
    as unlikely given u. A parent whose pool children carry most of the depth's mass keeps
    q_cond ≈ q_d; a parent with one likely pool child passes nearly all of its reach on.
    """
    lp_t = cand_logprob.detach().cpu().to(torch.float64).numpy()
    B = lp_t.shape[0]
    with np.errstate(divide="ignore"):
        log_tail = np.log(np.maximum(0.0, 1.0 - np.exp(lp_t).sum(axis=2)))  # [B, L]
    out = np.zeros(pool.token.shape, dtype=np.float32)
    for b in range(B):
        n = int(pool.size[b])
        if n <= 1:
            continue
        par = pool.parent[b, 1:n].numpy()
        dep = pool.depth[b, 1:n].numpy()
        lp = lp_t[b, dep - 1, pool.rank[b, 1:n].numpy()]
        m = np.full(n, -np.inf)
        np.maximum.at(m, par, lp)
        lt = log_tail[b, dep - 1]  # the child's depth's tail, same for all children of u
        np.maximum.at(m, par, lt)
        s = np.zeros(n)
        np.add.at(s, par, np.exp(lp - m[par]))
        tail_at = np.full(n, -np.inf)
        tail_at[par] = lt
        with np.errstate(invalid="ignore"):  # rows without children: -inf - -inf, unused
            lse = m + np.log(s + np.exp(tail_at - m))
        out[b, 1:n] = np.minimum(lp - lse[par], 0.0).astype(np.float32)
    return torch.from_numpy(out)
