"""Reference implementations in plain PyTorch: readable, slow, and the definition the C++ and
CUDA paths must match bit for bit. They take and return the same things as ``difftree_rt.ops``.

DDTree here uses the *parallel* form (a beam of width ``budget`` per depth, then a global top
``budget``), while the C++ core uses the heap form, so agreement checks two algorithms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .ops import MIN_LOGPROB, WalkResult
from .tree import DraftTree, anc_words

__all__ = [
    "ddtree_select",
    "ddtree_select_from_candidates",
    "kv_commit",
    "node_select",
    "topk_logprobs",
    "tree_from_parents",
    "tree_walk",
]


def topk_logprobs(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Reference of :func:`difftree_rt.ops.topk_logprobs`.

    Args:
        logits: ``[B, L, V]``. k: ``1..V``.
    Returns:
        ``(token int32 [B, L, K], logprob float32 [B, L, K])``.
    """
    x = logits.float()
    if torch.isnan(x).any() or (x == float("inf")).any():
        raise ValueError("logits: expected finite values or -inf")
    # Log-sum-exp in f64, rounded to f32 once; then one f32 subtraction per entry.
    lse = torch.logsumexp(x.double(), dim=-1, keepdim=True).float()
    lp = (x - lse).clamp_min(MIN_LOGPROB)
    # A stable descending sort keeps equal log-probs in token-id order: ties -> lower id.
    lp_sorted, idx = torch.sort(lp, dim=-1, descending=True, stable=True)
    return idx[..., :k].to(torch.int32), lp_sorted[..., :k].contiguous()


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
    if not 1 <= budget <= 4096:
        raise ValueError(f"budget: expected a value in [1, 4096], got {budget}")
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


def tree_walk(
    tree: DraftTree,
    node_choice: Tensor,
    stop_token_ids: Sequence[int] | Tensor | None = None,
    remaining: Tensor | None = None,
) -> WalkResult:
    """Reference of :func:`difftree_rt.ops.tree_walk`: walk, then cut at stop tokens / the cap."""
    stops = set() if stop_token_ids is None else {int(s) for s in stop_token_ids}
    B, N = tree.token.shape
    P = min(tree.max_depth, N - 1) + 1
    path = torch.full((B, P), -1, dtype=torch.int32)
    accepted = torch.zeros(B, dtype=torch.int32)
    next_token = torch.full((B,), -1, dtype=torch.int32)
    done = torch.zeros(B, dtype=torch.bool)
    for b in range(B):
        n = int(tree.num_nodes[b])
        children: dict[int, dict[int, int]] = {}
        for i in range(1, n):
            children.setdefault(int(tree.parent[b, i]), {})[int(tree.token[b, i])] = i
        nodes = [0]
        while int(node_choice[b, nodes[-1]]) in children.get(nodes[-1], {}):
            nodes.append(children[nodes[-1]][int(node_choice[b, nodes[-1]])])
        emitted = [int(tree.token[b, i]) for i in nodes[1:]] + [int(node_choice[b, nodes[-1]])]
        cap = None if remaining is None else int(remaining[b])
        keep = len(emitted) if cap is None else min(len(emitted), cap)
        stopped = False
        for j, tok in enumerate(emitted[:keep]):
            if tok in stops:
                keep, stopped = j + 1, True
                break
        acc = min(keep, len(nodes) - 1)
        path[b, : acc + 1] = torch.tensor(nodes[: acc + 1], dtype=torch.int32)
        accepted[b] = acc
        next_token[b] = emitted[-1] if keep == len(emitted) else -1
        done[b] = stopped or (cap is not None and keep == cap)
    return WalkResult(path, accepted, next_token, done)


def kv_commit(
    caches: Sequence[Tensor], base_len: Tensor | int, path: Tensor, accepted: Tensor
) -> None:
    """Reference of :func:`difftree_rt.ops.kv_commit` (gather all rows first, then write)."""
    B = path.shape[0]
    for b in range(B):
        base = int(base_len[b]) if isinstance(base_len, Tensor) else int(base_len)
        acc = int(accepted[b])
        src = base + path[b, : acc + 1].long()
        dst = base + torch.arange(acc + 1)
        for cache in caches:
            rows = cache[b, :, src].clone()
            cache[b, :, dst] = rows


# ---- node_select (appended with the CUDA kernels work) ---------------------------------------
# Op for op the procedure of cuda/sampling_math.h: float32 tensor operations are single IEEE
# roundings, so these values are bit-identical to the C++ and CUDA paths.

_F32 = torch.float32


def _f32(x: float) -> Tensor:
    return torch.tensor(x, dtype=_F32)


def _f32_div(a: float, b: float) -> Tensor:
    return _f32(a) / _f32(b)  # the float32 quotient, as the C++ `a / bf` constants


def _pow2i(n: Tensor) -> Tensor:
    return ((n.to(torch.int32) + 127) << 23).view(_F32)


def _det_exp(t: Tensor) -> Tensor:
    ok = t >= -87.0
    t = torch.where(ok, t, torch.zeros_like(t))
    n = torch.floor(t * _f32(1.44269504) + _f32(0.5))
    r = t - n * _f32(0.693359375)
    r = r - n * _f32(-2.12194440e-4)
    p = _f32_div(1.0, 720.0).expand_as(r)
    for c in (_f32_div(1.0, 120.0), _f32_div(1.0, 24.0), _f32_div(1.0, 6.0), _f32(0.5)):
        p = p * r + c
    p = p * r + _f32(1.0)
    p = p * r + _f32(1.0)
    return torch.where(ok, p * _pow2i(n), torch.zeros_like(p))


def _det_log(x: Tensor) -> Tensor:
    u = x.view(torch.int32).to(torch.int64)
    e = ((u >> 23) & 0xFF) - 127
    mant = ((u & 0x7FFFFF) | 0x3F800000).to(torch.int32).view(_F32)
    big = mant > _f32(1.41421356)
    mant = torch.where(big, mant * _f32(0.5), mant)
    e = e + big.to(torch.int64)
    f = (mant - _f32(1.0)) / (mant + _f32(1.0))
    s = f * f
    p = _f32_div(2.0, 11.0).expand_as(s)
    for c in (_f32_div(2.0, 9.0), _f32_div(2.0, 7.0), _f32_div(2.0, 5.0), _f32_div(2.0, 3.0)):
        p = p * s + c
    lm = f * _f32(2.0) + (f * s) * p
    return e.to(_F32) * _f32(0.693147182) + lm


_M32 = 0xFFFFFFFF


def _mulhilo(a: Tensor, b: int) -> tuple[Tensor, Tensor]:
    """(hi, lo) of the 64-bit product of u32 values (int64 tensors), without overflow."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    mid = a_lo * b_hi + a_hi * b_lo
    low = a_lo * b_lo + ((mid & 0xFFFF) << 16)
    return a_hi * b_hi + (mid >> 16) + (low >> 32), low & _M32


def philox4x32_10(ctr: Sequence[Tensor], key: tuple[int, int]) -> list[Tensor]:
    """Philox-4x32-10 (Random123) on int64 tensors holding u32 counters; returns 4 words."""
    c0, c1, c2, c3 = (c.to(torch.int64) & _M32 for c in ctr)
    k0, k1 = key[0] & _M32, key[1] & _M32
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
        hi0, lo0 = _mulhilo(c0, 0xD2511F53)
        hi1, lo1 = _mulhilo(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def gumbel_noise(seed: int, round_idx: int, node: int, token_ids: Tensor) -> Tensor:
    """The float32 Gumbel noise of ``token_ids`` at (seed, round, node)."""
    v = token_ids.to(torch.int64)
    zeros = torch.zeros_like(v)
    words = philox4x32_10(
        (v >> 2, zeros + node, zeros + (round_idx & _M32), zeros + ((round_idx >> 32) & _M32)),
        (seed & _M32, (seed >> 32) & _M32),
    )
    lane = v & 3
    bits = torch.where(
        lane == 0,
        words[0],
        torch.where(lane == 1, words[1], torch.where(lane == 2, words[2], words[3])),
    )
    u = (((bits >> 9) << 1) | 1).to(_F32) * _f32(5.96046448e-08)
    return _f32(0.0) - _det_log(_f32(0.0) - _det_log(u))


def _param(p: Tensor | float | int | None, b: int, default: float | int) -> float | int:
    if p is None:
        return default
    if isinstance(p, Tensor):
        return p.reshape(-1)[b].item() if p.dim() > 0 else p.item()
    return p


def node_select(
    logits: Tensor,
    temperature: Tensor | float | None = None,
    top_k: Tensor | int | None = None,
    top_p: Tensor | float | None = None,
    seed: Tensor | int | None = None,
    round_idx: Tensor | int | None = None,
) -> Tensor:
    """Reference of :func:`difftree_rt.ops.node_select` (procedure in cuda/sampling_math.h).

    Args:
        logits: ``[B, N, V]``; per-request parameters as ``[B]`` tensors or scalars.
    Returns:
        int32 ``[B, N]``.
    """
    x_all = logits.float().cpu()
    if torch.isnan(x_all).any() or (x_all == float("inf")).any():
        raise ValueError("logits: expected finite values or -inf")
    B, N, V = x_all.shape
    out = torch.empty((B, N), dtype=torch.int32)
    for b in range(B):
        temp = torch.tensor(_param(temperature, b, 0.0), dtype=_F32)
        k = int(_param(top_k, b, 0))
        p = torch.tensor(_param(top_p, b, 1.0), dtype=_F32)
        s, r = int(_param(seed, b, 0)), int(_param(round_idx, b, 0))
        s &= (1 << 64) - 1
        r &= (1 << 64) - 1
        for i in range(N):
            x = x_all[b, i]
            if not bool(temp > 0):
                out[b, i] = int(torch.argmax(x + 0.0))  # first maximum: ties -> lowest id
                continue
            z = x / temp
            order = torch.sort(z + 0.0, descending=True, stable=True).indices
            keep = V
            if 0 < k < V:  # every value tied with the k-th stays (-0 == +0; a -inf k-th keeps all)
                keep = int((z >= z[order[k - 1]]).sum())
            if bool(p < 1.0):
                m = z[order[0]]
                w = _det_exp(z[order[:keep]] - m)
                q = (w * _f32(4294967296.0)).to(torch.int64)
                thr = float(p) * float(int(q.sum()))
                reach = (q.cumsum(0).double() >= thr).nonzero()
                keep = int(reach[0]) + 1 if len(reach) else keep
            kept = order[:keep].sort().values  # ids ascending: argmax ties -> lowest id
            score = z[kept] + gumbel_noise(s, r, i, kept)
            out[b, i] = int(kept[int(torch.argmax(score))])
    return out
