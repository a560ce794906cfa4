"""Tree positions and attention masks: plain torch (cheap, any device, compile-friendly)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..tree import DraftTree


def _base_len_tensor(base_len: Tensor | int, B: int, device: torch.device) -> Tensor:
    if isinstance(base_len, Tensor):
        if base_len.shape != (B,):
            raise ValueError(f"base_len: expected shape [B] = [{B}], got {list(base_len.shape)}")
        return base_len.to(device=device, dtype=torch.int64)
    return torch.full((B,), int(base_len), dtype=torch.int64, device=device)


def tree_positions(tree: DraftTree, base_len: Tensor | int) -> Tensor:
    """Position ids of the tree nodes: int64 ``[B, N]`` = ``base_len + depth``.

    Args:
        tree: the draft tree.
        base_len: committed context length, an int or ``[B]`` tensor (the root's position).
    """
    base = _base_len_tensor(base_len, tree.batch_size, tree.device)
    return base[:, None] + tree.depth.to(torch.int64)


def tree_anc_dense(tree: DraftTree) -> Tensor:
    """bool ``[B, N, N]``: entry (i, j) is True iff j is i or an ancestor of i."""
    N = tree.capacity
    j = torch.arange(N, device=tree.device)
    words = tree.anc[:, :, j // 32]  # [B, N, N]
    return ((words >> (j % 32).to(torch.int32)) & 1).bool()


def tree_attention_mask(
    tree: DraftTree,
    base_len: Tensor | int,
    kv_len: int | None = None,
    dtype: torch.dtype = torch.bool,
) -> Tensor:
    """Dense attention mask for PyTorch paths (SDPA/eager) over a static cache where tree node
    i's K/V sits at row ``base_len + i``: the committed prefix ``[0, base_len)`` fully visible,
    ancestor-or-self inside the tree, nothing else.

    Args:
        tree: the draft tree (N nodes).
        base_len: committed length, int or ``[B]``.
        kv_len: key length of the mask; default ``max(base_len) + N`` (a host read when
            ``base_len`` is a tensor: pass it explicitly on the hot path).
        dtype: ``torch.bool`` (True = visible) or a float dtype (additive: 0 or -inf).

    Returns:
        ``[B, 1, N, kv_len]``.
    """
    B, N = tree.batch_size, tree.capacity
    base = _base_len_tensor(base_len, B, tree.device)
    if kv_len is None:
        kv_len = int(base.max().item()) + N
    col = torch.arange(kv_len, device=tree.device)[None, None, :]  # [1, 1, S]
    prefix = col < base[:, None, None]  # [B, 1, S]
    rel = col - base[:, None, None]  # tree slot of each column
    in_tree = (rel >= 0) & (rel < N)
    anc = tree_anc_dense(tree)  # [B, N, N]
    gathered = torch.gather(anc, 2, rel.clamp(0, N - 1).expand(B, N, kv_len))
    mask = (prefix.expand(B, N, kv_len) | (in_tree & gathered))[:, None]
    if dtype == torch.bool:
        return mask
    zero = torch.zeros((), dtype=dtype, device=tree.device)
    neg = torch.full((), float("-inf"), dtype=dtype, device=tree.device)
    return torch.where(mask, zero, neg)
