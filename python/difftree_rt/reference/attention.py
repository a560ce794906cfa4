"""Reference of tree attention (``difftree_rt.ops.tree_attention``; also the CPU / eager path of
``difftree_rt.models.tree_attention``): N new rows over the committed prefix plus the tree.

Vocabulary: B batch, N query rows (tree nodes, or new tokens for causal prefill/decode), H_q query
heads, H_kv key/value heads (H_q a multiple of H_kv: GQA), D_k / D_v key / value head dims, S cache
slots (S_max rows of a full cache, or a ring's slots), W sliding window.

Visibility for query row i of request b (written at cache row ``prefix_len[b] + i``): every
committed row ``[0, prefix_len[b])``, and tree row j iff bit j of ``tree_anc[b, i]`` is set (j is
i or an ancestor of i), or, with ``tree_anc=None``, iff j <= i (causal); with a window, only keys
whose positions are within W of the row's (see :func:`tree_attention_reference`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["anc_to_mask", "committed_positions", "tree_attention_reference"]

# Query rows per block: bounds the score tensor for long prefills.
_QUERY_CHUNK = 1024


def anc_to_mask(tree_anc: Tensor, num_rows: int) -> Tensor:
    """Unpack the ancestor bitmask into a boolean ``[B, N, N]`` mask (tree-sized, not context).

    Args:
        tree_anc: ``[B, N, W]`` int32 or uint32, ``W = ceil(N / 32)``; bit j of word ``j // 32``
            (bit ``j % 32``) of row i set iff j is i or an ancestor of i.
        num_rows: N.

    Returns:
        ``[B, N, N]`` bool, ``mask[b, i, j]`` true iff j is visible from i.
    """
    words = tree_anc
    if words.dtype != torch.int32:
        # uint32 bitwise ops are sparsely implemented in torch; reinterpret the same bits.
        words = words.view(torch.int32) if words.dtype == torch.uint32 else words.to(torch.int32)
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    # Arithmetic shift then `& 1` still yields bit 31 correctly for negative words.
    bits = (words.unsqueeze(-1) >> shifts) & 1  # [B, N, W, 32]
    return bits.flatten(-2)[..., :num_rows].bool()


def committed_positions(prefix_len: Tensor, span: int, num_slots: int, ring: bool) -> Tensor:
    """Committed position held by each of the first ``span`` cache slots (-1: none).

    A full cache holds position p at slot p; a ring of ``num_slots`` slots holds p at slot
    ``p % num_slots``, and slot s then holds the newest committed position congruent to s.

    Args:
        prefix_len: ``[B]`` int64 committed rows.
        span: slots scanned (``<= num_slots``).
        num_slots: S, the cache's slot count.
        ring: whether the cache is a ring.

    Returns:
        ``[B, span]`` int64 positions, -1 where a slot holds no committed row.
    """
    slots = torch.arange(span, device=prefix_len.device)[None, :]
    base = prefix_len[:, None]
    if ring:
        pos = base - 1 - torch.remainder(base - 1 - slots, num_slots)
    else:
        pos = slots.expand(prefix_len.shape[0], span)
    return torch.where((pos >= 0) & (pos < base), pos, torch.full_like(pos, -1))


def tree_attention_reference(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix_len: Tensor,
    tree_anc: Tensor | None,
    num_nodes: Tensor | None,
    scale: float,
    *,
    kv_bound: int | None = None,
    tree_mask: Tensor | None = None,
    depth: Tensor | None = None,
    window: int = 0,
    sinks: Tensor | None = None,
    ring: bool = False,
) -> Tensor:
    """Plain-PyTorch tree attention (readable oracle, and the CPU/eager path).

    Query row i of request b is written at cache row ``prefix_len[b] + i`` and sits at position
    ``prefix_len[b] + pos(i)``, ``pos(i) = depth[b, i]`` (``i`` without ``depth``: causal rows).
    It sees committed position p (``p < prefix_len[b]``) and tree row j (j = i or an ancestor of
    i, or ``j <= i`` when causal) when, with a window W > 0, their positions are less than W
    apart (transformers' sliding-window rule ``kv_idx > q_idx - W``). Row r lives in slot r of
    a full cache, slot ``r % S`` of a ring (``ring=True``: a windowed layer's ring of
    ``S >= W - 1 + N`` slots). With ``sinks`` the softmax denominator has one more term
    ``exp(sinks[h])`` per query head h (gpt-oss attention sinks).

    Args:
        q: ``[B, H_q, N, D_k]`` queries (RoPE applied).
        k_cache: ``[B, H_kv, S, D_k]``; v_cache: ``[B, H_kv, S, D_v]``; the N new rows are
            already written at rows ``prefix_len[b] + i``.
        prefix_len: ``[B]`` int, committed rows per request.
        tree_anc: ``[B, N, ceil(N/32)]`` ancestor bitmask, or ``None`` for causal new rows.
        num_nodes: ``[B]`` valid nodes (rows past it are padding, isolated by their self-only
            ``anc``); unused here, kept for the kernel's signature.
        scale: softmax scale (usually ``D_k ** -0.5``).
        kv_bound: host-side upper bound on ``max(prefix_len)`` so a full cache's prefix part
            scans only ``[0, kv_bound)`` instead of all S rows; ``None`` scans S (a ring always
            scans its S slots).
        tree_mask: optional precomputed ``anc_to_mask(tree_anc, N)`` (shared by all layers).
        depth: ``[B, N]`` int depth of each row (needed with a window and a tree).
        window: W, the sliding window (0: none).
        sinks: ``[H_q]`` per-head sink logits, or ``None``.
        ring: the caches are rings of S slots (needs ``window > 0``).

    Returns:
        ``[B, H_q, N, D_v]`` in ``q``'s dtype.
    """
    del num_nodes  # Padding rows need no special handling: they only see themselves.
    num_b, h_q, num_n, dim = q.shape
    h_kv, s_max, dim_v = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    group = h_q // h_kv
    if ring and window <= 0:
        raise ValueError("a ring cache needs a sliding window (window > 0)")
    if ring:
        span = s_max
    else:
        span = s_max if kv_bound is None else max(0, min(int(kv_bound), s_max))
    device = q.device

    base = prefix_len.to(device=device, dtype=torch.long)
    # Tree (new) rows live at base + i (mod S in a ring); gather them per request.
    rows = base[:, None] + torch.arange(num_n, device=device)
    rows = rows % s_max if ring else rows.clamp_(max=s_max - 1)  # clamp: memory safety only
    k_tree = torch.gather(k_cache, 2, rows[:, None, :, None].expand(num_b, h_kv, num_n, dim))
    v_tree = torch.gather(v_cache, 2, rows[:, None, :, None].expand(num_b, h_kv, num_n, dim_v))
    k_pre = k_cache[:, :, :span]
    v_pre = v_cache[:, :, :span]

    if tree_anc is None:
        vis = torch.ones(num_n, num_n, dtype=torch.bool, device=device).tril_()[None]
    else:
        vis = tree_mask if tree_mask is not None else anc_to_mask(tree_anc, num_n)
    pre_pos = committed_positions(base, span, s_max, ring)  # [B, span]
    if window > 0:
        if depth is None:
            if tree_anc is not None:
                raise ValueError("a sliding window over a tree needs the rows' depth")
            rel = torch.arange(num_n, device=device)[None, :].expand(num_b, num_n)
        else:
            rel = depth.to(device=device, dtype=torch.long)
        q_pos = base[:, None] + rel  # [B, N]
        # [B, N, span]: committed and in the window; [B, N, N]: tree rows in the window.
        pre_ok = (pre_pos[:, None, :] >= 0) & (q_pos[:, :, None] - pre_pos[:, None, :] < window)
        vis = vis & (rel[:, :, None] - rel[:, None, :] < window)
    else:
        pre_ok = (pre_pos >= 0)[:, None, :].expand(num_b, num_n, span)
    sink = None
    if sinks is not None:
        sink = sinks.to(device=device, dtype=torch.float32).view(1, h_kv, group, 1, 1)

    # GQA: pack the G query heads of each KV head along the row axis (no K/V repeat).
    qg = q.reshape(num_b, h_kv, group, num_n, dim)
    out = q.new_empty((num_b, h_kv, group, num_n, dim_v))
    for r0 in range(0, num_n, _QUERY_CHUNK):
        r1 = min(num_n, r0 + _QUERY_CHUNK)
        rc = r1 - r0
        qc = qg[:, :, :, r0:r1].reshape(num_b, h_kv, group * rc, dim)
        s_pre = (torch.matmul(qc, k_pre.transpose(-1, -2)) * scale).view(
            num_b, h_kv, group, rc, span
        )
        s_pre = s_pre.masked_fill(~pre_ok[:, None, None, r0:r1, :], -math.inf)
        s_tree = (torch.matmul(qc, k_tree.transpose(-1, -2)) * scale).view(
            num_b, h_kv, group, rc, num_n
        )
        s_tree = s_tree.masked_fill(~vis[:, None, None, r0:r1, :], -math.inf)
        # One joint softmax across prefix and tree keys (+ the sink), fp32 like HF eager.
        parts = [s_pre.float(), s_tree.float()]
        if sink is not None:
            parts.append(sink.expand(num_b, h_kv, group, rc, 1))
        probs = torch.cat(parts, dim=-1).softmax(dim=-1).to(q.dtype)
        probs = probs.view(num_b, h_kv, group * rc, -1)
        o = torch.matmul(probs[..., :span], v_pre) + torch.matmul(
            probs[..., span : span + num_n], v_tree
        )
        out[:, :, :, r0:r1] = o.view(num_b, h_kv, group, rc, dim_v)
    return out.view(num_b, h_q, num_n, dim_v)
