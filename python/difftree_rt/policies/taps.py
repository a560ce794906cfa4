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

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..tree import DraftTree
from ._validate import check_int, check_path
from .base import DraftPolicy, PolicyInput, PolicyNeeds

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

    def to(self, device: torch.device | str) -> TapsPool:
        """The same pool on ``device``."""
        t = (self.token, self.parent, self.depth, self.rank, self.score, self.size)
        return TapsPool(*(x.to(device) for x in t), self.max_depth)


def _rank_key(score: Tensor, idx: Tensor) -> Tensor:
    """int64 keys ordering (score desc, idx asc), larger = better; -0.0 == 0.0 (as a float
    comparison sort); unique whenever ``idx`` is."""
    bits = (score + 0.0).view(torch.int32).to(torch.int64)  # -0.0 + 0.0 = +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float value
    return ordered * (1 << 32) + ((1 << 32) - 1 - idx)


@functools.lru_cache(maxsize=64)
def _beam_candidates(prev: int, width: int, k: int, device: str) -> tuple[Tensor, Tensor]:
    """The beam's candidates at one depth: (parent beam index, rank) int64 ``[C]`` in parent-major
    order, only those with ``(i + 1)(r + 1) <= width`` (the others cannot make the beam: every
    (i' <= i, r' <= r) precedes them). Built on the device from shapes only (no host copy)."""
    c = sum(min(width // (i + 1), k) for i in range(prev))
    per = torch.clamp(width // torch.arange(1, prev + 1, device=device), max=k)
    ends = torch.cumsum(per, 0)
    idx = torch.arange(c, device=device)
    par = torch.searchsorted(ends, idx, right=True)
    return par, idx - (ends - per)[par]


@functools.lru_cache(maxsize=64)
def _parent_starts(widths: tuple[int, ...], device: str) -> Tensor:
    """int64 ``[Σ widths]``: for each beam node (depths concatenated), where the beam of the
    depth above starts in the concatenation (0 at depth 1). Fills only (no host copy)."""
    starts = [0] + [sum(widths[: d - 1]) for d in range(1, len(widths))]
    return torch.cat(
        [torch.full((w,), s, dtype=torch.int64, device=device) for w, s in zip(widths, starts)]
    )


def taps_pool(
    cand_token: Tensor,
    cand_logprob: Tensor,
    width: int,
    pool_size: int,
    root_token: Tensor | None = None,
) -> TapsPool:
    """The TAPS candidate pool (module docstring, step 1) of ``[B, L, K]`` candidates, on their
    device with torch ops of fixed shapes (no host read): the pool has ``min(pool_size, beam
    nodes) + 1`` rows for every request, a number that depends on the shapes only.
    Bit-identical to the numpy form ``difftree_rt.reference.taps.taps_pool``: the same
    fp32 sums, and both orders (per-depth beam, pool) are exact top-k selections over unique
    integer keys (score desc, then candidate index) instead of stable sorts."""
    if width < 1 or pool_size < 1:
        raise ValueError(f"width and pool_size must be >= 1, got {width}, {pool_size}")
    B, L, K = cand_logprob.shape
    dev = cand_logprob.device
    lp = cand_logprob.detach().to(torch.float32)
    P1 = pool_size + 1
    token = torch.full((B, P1), -1, dtype=torch.int64, device=dev)
    parent = torch.full((B, P1), -1, dtype=torch.int64, device=dev)
    depth = torch.zeros((B, P1), dtype=torch.int64, device=dev)
    rank = torch.full((B, P1), -1, dtype=torch.int64, device=dev)
    score = torch.full((B, P1), float("-inf"), dtype=torch.float32, device=dev)
    token[:, 0] = 0 if root_token is None else root_token.to(device=dev, dtype=torch.int64)
    score[:, 0] = 0.0
    if L == 0 or K == 0 or B == 0:
        return TapsPool(
            token, parent, depth, rank, score, torch.ones(B, dtype=torch.int64, device=dev), L
        )
    k = min(K, width)
    # The beam, depth by depth: best `width` of (beam at d - 1) x (top-k at d).
    prev = torch.zeros((B, 1), dtype=torch.float32, device=dev)
    scores, bpars, ranks, depths = [], [], [], []
    for d in range(L):
        cpar, crk = _beam_candidates(prev.shape[1], width, k, str(dev))
        flat = prev[:, cpar] + lp[:, d, crk]  # fp32, parent-major candidate order
        w = min(width, flat.shape[1])
        keep = torch.topk(_rank_key(flat, torch.arange(flat.shape[1], device=dev)), w).indices
        prev = flat.gather(1, keep)
        scores.append(prev)
        bpars.append(cpar[keep])
        ranks.append(crk[keep])
        depths.append(torch.full((w,), d + 1, dtype=torch.int64, device=dev))
    all_score = torch.cat(scores, 1)  # [B, T] depth-major, beam order within a depth
    all_rank = torch.cat(ranks, 1)
    all_depth = torch.cat(depths)
    # Concat index of each node's parent beam node: the start of depth d - 1 in the
    # concatenation + the parent's beam index (depth 1: the root, patched below).
    par_concat = _parent_starts(tuple(t.shape[1] for t in scores), str(dev))
    par_concat = par_concat + torch.cat(bpars, 1)  # [B, T]
    T = all_score.shape[1]
    P = min(pool_size, T)
    order = torch.topk(_rank_key(all_score, torch.arange(T, device=dev)), P).indices  # [B, P]
    row = torch.full((B, T), -1, dtype=torch.int64, device=dev)
    row.scatter_(1, order, torch.arange(1, P + 1, device=dev).expand(B, P).contiguous())
    par_all = torch.where(all_depth == 1, 0, row.gather(1, par_concat))
    dep = all_depth[order]
    rk = all_rank.gather(1, order)
    flat_tok = cand_token.detach().to(device=dev, dtype=torch.int64).reshape(B, L * K)
    token[:, 1 : P + 1] = flat_tok.gather(1, (dep - 1) * K + rk)
    parent[:, 1 : P + 1] = par_all.gather(1, order)
    depth[:, 1 : P + 1] = dep
    rank[:, 1 : P + 1] = rk
    score[:, 1 : P + 1] = all_score.gather(1, order)
    size = torch.full((B,), P + 1, dtype=torch.int64, device=dev)
    return TapsPool(token, parent, depth, rank, score, size, L)


def _pool_rows(pool: TapsPool) -> Tensor:
    """bool ``[B, P1]``: the valid non-root rows (1 <= row < size)."""
    j = torch.arange(pool.token.shape[1], device=pool.token.device)
    return (j >= 1) & (j < pool.size.to(pool.token.device)[:, None])


def _child_logprob(pool: TapsPool, lp: Tensor, rows: Tensor) -> Tensor:
    """``lp[b, depth - 1, rank]`` per pool row (0 where not ``rows``), in lp's dtype."""
    B, L, K = lp.shape
    idx = torch.where(rows, (pool.depth - 1).clamp(min=0) * K + pool.rank.clamp(min=0), 0)
    return torch.where(rows, lp.reshape(B, L * K).gather(1, idx), 0.0)


def marginal_log_qc(pool: TapsPool, cand_logprob: Tensor) -> Tensor:
    """``log q_cond = log q_d(child)``, the draft marginal itself: reach = the DDTree score, so
    the selection is DDTree restricted to the pool (exactly DDTree when the pool contains the
    DDTree tree, e.g. ``width >= budget`` and ``pool_size >= budget``). On the pool's device,
    fixed shapes, exact."""
    lp = cand_logprob.detach().to(device=pool.token.device, dtype=torch.float32)
    return _child_logprob(pool, lp, _pool_rows(pool)).to(torch.float32)


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

    On the pool's device with fixed shapes (no host read), for pools built by :func:`taps_pool`
    from sorted candidates: a parent's pool children are its ranks 0..n_u - 1 at the next depth
    (a child outranks its later siblings in the beam and the pool), so the max of the
    logsumexp is the depth's ``max(lp[d, 0], log tail_d)`` and the sum over ``C(u)`` is a prefix
    sum over ranks, accumulated in rank order as the numpy reference
    (``reference.taps.fallback_log_qc``) does. The rank-0 child (the only one whose q_cond can
    approach 1) is evaluated as ``-log1p((Σ_{1<=r<n_u} q_r + tail_d) / q_0)``, accurate to a
    few f64 ulps relative where ``lp - lse`` cancels, so the f32 result does not depend on the
    implementation's exp/log and summation order (CPU and CUDA agree bit for bit but for values
    within ~1e-15 relative of an f32 rounding boundary). The numpy reference evaluates
    ``lp - lse`` everywhere: equal bits for |log q_cond| above ~1e-6, agreement to ~1e-15
    absolute below.
    """
    dev = pool.token.device
    lp = cand_logprob.detach().to(device=dev, dtype=torch.float64)
    B, L, K = lp.shape
    P1 = pool.token.shape[1]
    if L == 0 or K == 0:
        return torch.zeros((B, P1), dtype=torch.float32, device=dev)
    log_tail = torch.log(torch.clamp(1.0 - torch.exp(lp).sum(dim=2), min=0.0))  # [B, L]
    m = torch.maximum(lp[:, :, 0], log_tail)  # [B, L]: the logsumexp shift of depth d's parents
    e = torch.exp(lp - m[:, :, None])  # [B, L, K]
    csum = torch.cumsum(e, dim=2)  # Σ_{r' <= r}, in rank order (sequential on the CPU)
    csum1 = torch.cumsum(torch.cat([torch.zeros_like(e[:, :, :1]), e[:, :, 1:]], 2), dim=2)
    rows = _pool_rows(pool)
    par = torch.where(rows, pool.parent, 0)
    # n_u - 1 = the largest rank among u's children (-1 for a childless row).
    last = torch.full((B, P1), -1, dtype=torch.int64, device=dev)
    last = last.scatter_reduce(1, par, torch.where(rows, pool.rank, -1), "amax")
    d = torch.where(rows, pool.depth - 1, 0)  # the child's depth - 1 (its parent's children's)
    at = d * K + last.gather(1, par).clamp(min=0)  # [B, P1]: (depth, n_u - 1) of each child
    md = m.gather(1, d)
    tail = torch.exp(log_tail.gather(1, d) - md)
    lpc = _child_logprob(pool, lp, rows)
    # Rank r >= 1 (q_cond <= 1/2): lp - logsumexp, as the reference.
    lse = md + torch.log(csum.reshape(B, L * K).gather(1, at) + tail)
    other = lpc - lse
    # Rank 0 (q_cond up to 1): -log1p(mass of the other outcomes / its own), accurate near 0
    # where lp - lse cancels (there the f64 noise of exp/log would decide the f32 bits).
    e0 = e[:, :, 0].gather(1, d)
    first = -torch.log1p((csum1.reshape(B, L * K).gather(1, at) + tail) / e0)
    lq = torch.where(pool.rank == 0, first, other)
    out = (torch.clamp(lq, max=0.0) + 0.0).to(torch.float32)  # + 0.0: no -0.0
    return torch.where(rows, out, 0.0)


#: The largest candidate pool (the core's tree limit: the pool is a tree of P + 1 rows).
MAX_POOL = 4096


def _scorer(scorer: Any) -> Any:
    """:class:`TapsPolicy`'s ``scorer`` argument, checked (a path is loaded)."""
    if scorer is None or (isinstance(scorer, str) and scorer == "marginal"):
        return scorer
    if isinstance(scorer, (str, os.PathLike)):
        from .taps_scorer import EdgeScorer

        return EdgeScorer.load(check_path("scorer", scorer))
    if not callable(getattr(scorer, "log_qc", None)):
        raise TypeError(
            "scorer must be None, 'marginal', a scorer file path or an object with "
            f"log_qc(pool, cand_token, cand_logprob, inputs), got {type(scorer).__name__}"
        )
    return scorer


class TapsPolicy(DraftPolicy):
    """TAPS (ALGORITHMS.md §6): the top-``budget`` pool nodes by estimated reach.

    Args:
        budget: draft nodes per round.
        width: beam width W of the pool, >= 1 (None: ``budget``); also K, the candidates per
            depth.
        pool_size: P, pool nodes in [1, 4096] (None: ``min(2 * budget, 4096)``).
        scorer: None for the training-free :func:`fallback_log_qc`, ``"marginal"`` for the
            draft marginals (= DDTree on the pool), the path (str or ``os.PathLike``) of a
            file saved by ``difftree-rt train-scorer``, or an object with ``log_qc(pool,
            cand_token, cand_logprob, inputs) -> [B, P1] float32``.
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
        self.width = self.budget if width is None else check_int("width", width, 1)
        self.pool_size = (
            min(2 * self.budget, MAX_POOL)
            if pool_size is None
            else check_int("pool_size", pool_size, 1, MAX_POOL)
        )
        self.scorer = _scorer(scorer)

    @property  # type: ignore[override]
    def needs(self) -> PolicyNeeds:
        """``graph_safe`` follows the scorer: the built-in estimates (fallback, marginal) run
        on the device with fixed shapes, so graph mode can capture the round; a trained scorer
        reads pool sizes on the host."""
        builtin = self.scorer is None or (
            isinstance(self.scorer, str) and self.scorer == "marginal"
        )
        return PolicyNeeds(graph_safe=builtin)

    def log_qc(self, pool: TapsPool, token: Tensor, logprob: Tensor, inputs: PolicyInput):
        """``[B, P1]`` float32 on the pool's device. The built-in estimates run there; a
        trained scorer runs on the host (it reads pool sizes per request)."""
        if self.scorer is None:
            return fallback_log_qc(pool, logprob)
        if self.scorer == "marginal":
            return marginal_log_qc(pool, logprob)
        dev = pool.token.device
        return self.scorer.log_qc(pool.to("cpu"), token.cpu(), logprob.cpu(), inputs).to(dev)

    def select(self, inputs: PolicyInput) -> DraftTree:
        from .. import ops

        logits = inputs.draft_logits
        V = logits.shape[-1]
        k = max(1, min(self.width, V))
        token, logprob = ops.topk_logprobs(logits, k)
        # Candidates, pool, q_cond (built-in estimates) and the selection (cuda/taps_select.cu,
        # bit-identical) all stay on the logits' device: no host read on CUDA.
        root = inputs.root_token.to(logits.device)
        pool = taps_pool(token, logprob, self.width, self.pool_size, root)
        log_qc = self.log_qc(pool, token, logprob, inputs)
        tree = ops.taps_select(
            pool.token, pool.parent, pool.size, log_qc, self.budget, max_depth=pool.max_depth
        )
        return tree.to(logits.device)

    def __repr__(self) -> str:
        return (
            f"TapsPolicy(budget={self.budget}, width={self.width}, pool_size={self.pool_size}, "
            f"scorer={'fallback' if self.scorer is None else self.scorer!r})"
        )
