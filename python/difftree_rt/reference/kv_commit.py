"""References of ``difftree_rt.ops.kv_commit``: move the accepted path's KV rows into place.

:func:`kv_commit` is the row-by-row loop; :func:`kv_commit_reference` the vectorised gather /
scatter form (the fallback of ``difftree_rt.models.static_cache`` without the extension).

Vocabulary: B batch, H_kv key/value heads, S_max cache rows, D head dim, L tree depth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["kv_commit", "kv_commit_reference"]


def kv_commit(
    caches: Sequence[Tensor],
    base_len: Tensor | int,
    path: Tensor,
    accepted: Tensor,
    ring: bool = False,
) -> None:
    """Reference of :func:`difftree_rt.ops.kv_commit` (gather all rows first, then write); with
    ``ring`` row r lives in slot ``r % S``."""
    B = path.shape[0]
    for b in range(B):
        base = int(base_len[b]) if isinstance(base_len, Tensor) else int(base_len)
        acc = int(accepted[b])
        src = base + path[b, : acc + 1].long()
        dst = base + torch.arange(acc + 1)
        for cache in caches:
            s_rows = cache.shape[2]
            src_s, dst_s = (src % s_rows, dst % s_rows) if ring else (src, dst)
            rows = cache[b, :, src_s].clone()
            cache[b, :, dst_s] = rows


def kv_commit_reference(
    caches: list[Tensor], base_len: Tensor, path: Tensor, accepted: Tensor, ring: bool = False
) -> None:
    """Move the accepted path's rows into place, in every cache tensor (plain PyTorch).

    For each request b and j = 0..accepted[b], row ``base_len[b] + path[b, j]`` moves to row
    ``base_len[b] + j``, in every tensor of ``caches`` (all layers' K and V). ``base_len`` itself is
    not changed. Same contract as ``difftree_rt.ops.kv_commit``, vectorised (the fallback of
    ``difftree_rt.models.static_cache`` without the compiled extension).

    Args:
        caches: tensors ``[B, H_kv, S_max, D]`` (same B, S_max; H_kv and D may differ per tensor).
        base_len: ``[B]`` int, committed length before this round.
        path: ``[B, L+1]`` int, node index of the j-th path node (``path[:, 0] == 0``, strictly
            increasing up to ``accepted``); entries past ``accepted`` are ignored.
        accepted: ``[B]`` int, number of accepted draft nodes (the path has ``accepted + 1`` nodes).
        ring: the caches are rings: row r lives in slot ``r % S`` (a sliding-window layer's
            ring of ``S >= N`` slots, S per tensor).
    """
    if not caches:
        return
    device = caches[0].device
    num_b, path_len = path.shape
    j = torch.arange(path_len, device=device)
    # Entries past `accepted` repeat the last valid move: duplicate writes then carry identical
    # values (deterministic) and never reach past the rows verify actually wrote.
    jj = torch.minimum(j[None, :], accepted.to(device=device, dtype=torch.long)[:, None])
    src_rel = torch.gather(path.to(device=device, dtype=torch.long), 1, jj)
    base = base_len.to(device=device, dtype=torch.long)[:, None]
    src = base + src_rel  # [B, L+1]
    dst = base + jj
    for cache in caches:
        _, heads, s_rows, dim = cache.shape
        src_c, dst_c = (src % s_rows, dst % s_rows) if ring else (src, dst)
        src_idx = src_c[:, None, :, None].expand(num_b, heads, path_len, dim)
        dst_idx = dst_c[:, None, :, None].expand(num_b, heads, path_len, dim)
        # Stage: gather copies every source row before any destination is written, so
        # overlapping source/destination rows (a_j >= j) are safe.
        staged = torch.gather(cache, 2, src_idx)
        cache.scatter_(2, dst_idx, staged)
