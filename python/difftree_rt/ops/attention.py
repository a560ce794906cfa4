"""Tree-verification attention over a static KV cache (cpu/tree_attention.cpp: an fp32 oracle;
cuda/tree_attention.cu: the fused kernel)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._ext import dl, dl_opt, ext, require_tensor, require_tensors, stream_of
from ._custom import cuda_workspace, custom_op


def _tree_attention_out(q: Tensor, v_cache: Tensor) -> Tensor:
    # [B, H_q, N, D_v] as a transposed view of [B, N, H_q, D_v]: the layout the model's o_proj
    # wants, so the HF attention path's ``transpose(1, 2).contiguous()`` is free.
    B, H, N, _ = q.shape
    return q.new_empty((B, N, H, v_cache.shape[-1])).transpose(1, 2)


def _tree_attention_fake(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, prefix_len: Tensor, tree_anc: Optional[Tensor],
    num_nodes: Optional[Tensor], scale: float, is_chain: bool, num_splits: int,
    depth: Optional[Tensor] = None, window: int = 0, sinks: Optional[Tensor] = None,
    ring: bool = False,
) -> Tensor:  # fmt: skip
    return _tree_attention_out(q, v_cache)


@custom_op("tree_attention", fake=_tree_attention_fake)
def _tree_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix_len: Tensor,
    tree_anc: Optional[Tensor],
    num_nodes: Optional[Tensor],
    scale: float,
    is_chain: bool,
    num_splits: int,
    depth: Optional[Tensor] = None,
    window: int = 0,
    sinks: Optional[Tensor] = None,
    ring: bool = False,
) -> Tensor:
    C = ext()
    inputs = (
        dl(q),
        dl(k_cache),
        dl(v_cache),
        dl(prefix_len),
        dl_opt(tree_anc),
        dl_opt(num_nodes),
        scale,
        is_chain,
    )
    variant = {"depth": dl_opt(depth), "window": window, "sinks": dl_opt(sinks), "ring": ring}
    C.check_tree_attention(*inputs, **variant)
    out = _tree_attention_out(q, v_cache)
    B, H_q, N, _ = q.shape
    workspace = cuda_workspace(  # split-KV: partial outputs are D_v wide
        q,
        lambda: C.tree_attention_workspace_bytes(
            B, H_q, k_cache.shape[1], N, v_cache.shape[-1], k_cache.shape[2], num_splits
        ),
    )
    C.tree_attention(*inputs, num_splits, dl(out), dl_opt(workspace), stream_of(q), **variant)
    return out


def tree_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    prefix_len: Tensor,
    tree_anc: Tensor | None,
    num_nodes: Tensor | None,
    scale: float,
    is_chain: bool = False,
    num_splits: int = 0,
    *,
    depth: Tensor | None = None,
    window: int = 0,
    sinks: Tensor | None = None,
    ring: bool = False,
) -> Tensor:
    """Tree-verification attention over a static KV cache (CPU: fp32 oracle; CUDA: fused kernel).

    Query row i of request b sees every committed key ``[0, prefix_len[b])`` and tree key j (cache
    row ``prefix_len[b] + j``) iff j is i or an ancestor of i (bit j of ``tree_anc[b, i]``), or,
    for a chain (``is_chain`` or ``tree_anc=None``), iff ``j <= i``. Rows and keys at or past
    ``num_nodes[b]`` are padding: they see / are seen by only themselves in the tree part. One
    softmax over all visible keys, fp32 accumulation. Same semantics as
    :func:`difftree_rt.reference.attention.tree_attention_reference` for well-formed trees.

    The layer's attention variant (DESIGN.md §7): row i sits at position
    ``prefix_len[b] + depth[b, i]`` (``+ i`` without ``depth``); with ``window`` W > 0 it sees
    only keys whose positions are less than W before its own (transformers' sliding rule).
    ``sinks`` adds ``exp(sinks[h])`` to head h's softmax denominator (gpt-oss). ``ring``: the
    caches are rings of S slots, row r in slot ``r % S`` (needs W >= 1 and ``S >= W - 1 + N``;
    then any ``prefix_len >= 0`` is valid).

    Args:
        q: ``[B, H_q, N, D_k]`` float32/float16/bfloat16 (last dim contiguous; CUDA: f16/bf16,
            (D_k, D_v) in {(64, 64), (128, 128), (192, 128)}).
        k_cache: ``[B, H_kv, S, D_k]``, v_cache: ``[B, H_kv, S, D_v]``, in q's dtype, the tree's
            K/V already written at rows ``prefix_len + i``; ``H_q`` a multiple of ``H_kv`` (GQA).
        prefix_len: ``[B]`` int32/int64 committed rows, ``0 <= prefix_len <= S - N`` (a full
            cache) or ``>= 0`` (a ring).
        tree_anc: ``[B, N, ceil(N/32)]`` int32 ancestor bitmask (uint32 is viewed), or None.
        num_nodes: ``[B]`` int32/int64 valid nodes, or None (all N).
        scale: softmax scale (usually ``D_k ** -0.5``).
        is_chain: causal inside the tree; ``tree_anc`` is not read.
        num_splits: CUDA split-KV count (0: automatic); ignored on the CPU.
        depth: ``[B, N]`` int32/int64 row depths in ``[0, N)``; required with a window over a
            tree (``tree_anc`` given, not ``is_chain``).
        window: W >= 0, the sliding window (0: none).
        sinks: ``[H_q]`` float32 per-head sink logits, or None.
        ring: the caches are rings (needs ``window >= 1``).

    Returns:
        ``[B, H_q, N, D_v]`` in q's dtype (a transposed view of a ``[B, N, H_q, D_v]`` buffer).
    """
    require_tensors(q=q, k_cache=k_cache, v_cache=v_cache, prefix_len=prefix_len)
    if tree_anc is not None:
        require_tensor(tree_anc, "tree_anc")
        if tree_anc.dtype == torch.uint32:
            tree_anc = tree_anc.view(torch.int32)
    if num_nodes is not None:
        require_tensor(num_nodes, "num_nodes")
    if depth is not None:
        require_tensor(depth, "depth")
    if sinks is not None:
        require_tensor(sinks, "sinks")
    return _tree_attention(
        q, k_cache, v_cache, prefix_len, tree_anc, num_nodes,
        float(scale), bool(is_chain), int(num_splits), depth, int(window), sinks, bool(ring),
    )  # fmt: skip


def tree_attention_workspace_bytes(
    q: Tensor, k_cache: Tensor, num_splits: int = 0, v_cache: Tensor | None = None
) -> int:
    """Bytes of split-KV scratch the CUDA :func:`tree_attention` allocates for these shapes (the
    partial outputs are D_v wide: pass ``v_cache`` when D_v differs from D_k)."""
    B, H_q, N, D = q.shape
    D_v = D if v_cache is None else v_cache.shape[-1]
    return int(
        ext().tree_attention_workspace_bytes(
            B, H_q, k_cache.shape[1], N, D_v, k_cache.shape[2], int(num_splits)
        )
    )
