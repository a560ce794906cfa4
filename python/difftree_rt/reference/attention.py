"""Reference of tree attention (``difftree_rt.ops.tree_attention``; also the CPU / eager path of
``difftree_rt.models.tree_attention``): N new rows over the committed prefix plus the tree.

Vocabulary: B batch, N query rows (tree nodes, or new tokens for causal prefill/decode), H_q query
heads, H_kv key/value heads (H_q a multiple of H_kv: GQA), D head dim, S_max cache rows,
W = ceil(N / 32) ancestor words.

Visibility for query row i of request b (written at cache row ``prefix_len[b] + i``): every
committed row ``[0, prefix_len[b])``, and tree row j iff bit j of ``tree_anc[b, i]`` is set (j is
i or an ancestor of i), or, with ``tree_anc=None``, iff j <= i (causal).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["anc_to_mask", "tree_attention_reference"]

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
) -> Tensor:
    """Plain-PyTorch tree attention (readable oracle, and the CPU/eager path).

    Args:
        q: ``[B, H_q, N, D]`` queries (RoPE applied).
        k_cache, v_cache: ``[B, H_kv, S_max, D]``; the N new rows are already written at
            ``prefix_len[b] + i``.
        prefix_len: ``[B]`` int, committed rows per request (visible unmasked).
        tree_anc: ``[B, N, ceil(N/32)]`` ancestor bitmask, or ``None`` for causal new rows.
        num_nodes: ``[B]`` valid nodes (rows past it are padding, isolated by their self-only
            ``anc``); unused here, kept for the kernel's signature.
        scale: softmax scale (usually ``D ** -0.5``).
        kv_bound: host-side upper bound on ``max(prefix_len)`` so the prefix part scans only
            ``[0, kv_bound)`` instead of all S_max rows; ``None`` scans S_max.
        tree_mask: optional precomputed ``anc_to_mask(tree_anc, N)`` (shared by all layers).

    Returns:
        ``[B, H_q, N, D]`` in ``q``'s dtype.
    """
    del num_nodes  # Padding rows need no special handling: they only see themselves.
    num_b, h_q, num_n, dim = q.shape
    h_kv, s_max = k_cache.shape[1], k_cache.shape[2]
    group = h_q // h_kv
    span = s_max if kv_bound is None else max(0, min(int(kv_bound), s_max))
    device = q.device

    base = prefix_len.to(device=device, dtype=torch.long)
    # Tree (new) rows live at base + i; gather them per request.
    rows = base[:, None] + torch.arange(num_n, device=device)
    rows = rows.clamp_(max=s_max - 1)  # memory safety only; capacity is checked by the caller
    idx = rows[:, None, :, None].expand(num_b, h_kv, num_n, dim)
    k_tree = torch.gather(k_cache, 2, idx)
    v_tree = torch.gather(v_cache, 2, idx)
    k_pre = k_cache[:, :, :span]
    v_pre = v_cache[:, :, :span]

    if tree_anc is None:
        vis = torch.ones(num_n, num_n, dtype=torch.bool, device=device).tril_()[None]
    else:
        vis = tree_mask if tree_mask is not None else anc_to_mask(tree_anc, num_n)
    # Per-request key validity for the prefix part: [B, span], not [N, context].
    pre_ok = torch.arange(span, device=device)[None, :] < base[:, None]

    # GQA: pack the G query heads of each KV head along the row axis (no K/V repeat).
    qg = q.reshape(num_b, h_kv, group, num_n, dim)
    out = torch.empty_like(qg)
    for r0 in range(0, num_n, _QUERY_CHUNK):
        r1 = min(num_n, r0 + _QUERY_CHUNK)
        qc = qg[:, :, :, r0:r1].reshape(num_b, h_kv, group * (r1 - r0), dim)
        s_pre = torch.matmul(qc, k_pre.transpose(-1, -2)) * scale
        s_pre = s_pre.masked_fill(~pre_ok[:, None, None, :], -math.inf)
        s_tree = torch.matmul(qc, k_tree.transpose(-1, -2)) * scale
        s_tree = s_tree.view(num_b, h_kv, group, r1 - r0, num_n)
        s_tree = s_tree.masked_fill(~vis[:, None, None, r0:r1, :], -math.inf)
        s_tree = s_tree.view(num_b, h_kv, group * (r1 - r0), num_n)
        # One joint softmax across prefix and tree keys (fp32, like HF eager attention).
        probs = torch.cat([s_pre, s_tree], dim=-1).float().softmax(dim=-1).to(q.dtype)
        o = torch.matmul(probs[..., :span], v_pre) + torch.matmul(probs[..., span:], v_tree)
        out[:, :, :, r0:r1] = o.view(num_b, h_kv, group, r1 - r0, dim)
    return out.view(num_b, h_q, num_n, dim)
