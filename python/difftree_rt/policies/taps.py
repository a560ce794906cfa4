"""TAPS (ALGORITHMS.md §6): target-aware prefix selection by reach over a candidate pool.

Three steps per round (request b):

1. :func:`taps_pool` — the candidate pool: a beam over the per-depth top-K lattice by cumulative
   draft log-prob (fp32 sums, as DDTree's scores). Depth d keeps the best ``width`` of
   (depth d-1 beam) x (top-K tokens at depth d) under the normative order of docs/NOTES.md
   (score desc, earlier parent, smaller rank); the pool is the best ``pool_size`` beam nodes over
   all depths under the same order (score desc, depth asc, earlier parent, smaller rank).
   Scores never increase along a path and ties go to the shallower node, so the pool is
   prefix-closed and ordered parent < child. Tokens are distinct per depth, so no (parent,
   token) edge occurs twice. With ``width >= pool_size`` the pool is exactly the DDTree tree
   at budget ``pool_size``.
2. ``log q_cond(child | parent)`` for every pool edge: a trained edge scorer
   (``difftree_rt.policies.taps_scorer``) or the training-free fallback
   :func:`fallback_log_qc`.
3. ``difftree_rt.ops.taps_select``: reach ``log ρ(n) = fp32(log ρ(parent) + log q_cond(n))``,
   the top-``budget`` nodes by reach (prefix-closed by construction), best-first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..engine.policies import DraftPolicy, PolicyInput
from ..tree import DraftTree

__all__ = ["TapsPolicy", "TapsPool", "fallback_log_qc", "marginal_log_qc", "taps_pool"]


@dataclass
class TapsPool:
    """The candidate pool of a batch as trees of ``P1 = pool_size + 1`` rows (row 0 the root).

    Attributes:
        token, parent, depth, rank: ``[B, P1]`` int64 (padding rows -1, -1, 0, -1); ``rank`` is
            the child's candidate rank at its depth.
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
    """The TAPS candidate pool (module docstring, step 1) of ``[B, L, K]`` CPU candidates."""
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


class TapsPolicy(DraftPolicy):
    """TAPS (ALGORITHMS.md §6): the top-``budget`` pool nodes by estimated reach.

    Args:
        budget: draft nodes per round.
        width: beam width W of the pool (default ``budget``); also K, the candidates per depth.
        pool_size: P, pool nodes (default ``2 * budget``, at most 4096).
        scorer: None for the training-free :func:`fallback_log_qc`, ``"marginal"`` for the
            draft marginals (= DDTree on the pool), a path saved by ``difftree-rt
            train-scorer``, or an object with ``log_qc(pool, cand_token, cand_logprob,
            inputs) -> [B, P1] float32``.
    """

    name = "taps"

    def __init__(
        self,
        budget: int = 64,
        *,
        width: int | None = None,
        pool_size: int | None = None,
        scorer=None,
    ) -> None:
        super().__init__(budget)
        self.width = int(width or budget)
        self.pool_size = int(pool_size or min(2 * budget, 4096))
        if self.width < 1 or not 1 <= self.pool_size <= 4096:
            raise ValueError(f"width >= 1 and pool_size in [1, 4096], got {width}, {pool_size}")
        if isinstance(scorer, str) and scorer != "marginal":
            from .taps_scorer import EdgeScorer

            scorer = EdgeScorer.load(scorer)
        self.scorer = scorer

    def log_qc(self, pool: TapsPool, token: Tensor, logprob: Tensor, inputs: PolicyInput):
        if self.scorer is None:
            return fallback_log_qc(pool, logprob)
        if self.scorer == "marginal":
            return marginal_log_qc(pool, logprob)
        return self.scorer.log_qc(pool, token, logprob, inputs)

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        logits = inputs.draft_logits
        V = logits.shape[-1]
        k = max(1, min(self.width, V))
        token, logprob = ops.topk_logprobs(logits, k)
        token, logprob = token.cpu(), logprob.cpu()
        root = inputs.root_token.cpu()
        pool = taps_pool(token, logprob, self.width, self.pool_size, root)
        log_qc = self.log_qc(pool, token, logprob, inputs)
        # The pool and q_cond are built on the host (numpy); on CUDA logits the selection runs
        # on the device (cuda/taps_select.cu, bit-identical) and the tree stays there.
        dev = logits.device if logits.is_cuda else torch.device("cpu")
        tree = ops.taps_select(
            pool.token.to(dev),
            pool.parent.to(dev),
            pool.size.to(dev),
            log_qc.to(dev),
            self.budget,
            max_depth=pool.max_depth,
        )
        return tree.to(logits.device)

    def __repr__(self) -> str:
        return (
            f"TapsPolicy(budget={self.budget}, width={self.width}, pool_size={self.pool_size}, "
            f"scorer={'fallback' if self.scorer is None else self.scorer!r})"
        )
