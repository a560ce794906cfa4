"""Committing the accepted nodes' K/V rows (ALGORITHMS.md §4; cpu/kv_commit.cpp,
cuda/kv_commit.cu)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._ext import dl, ext, require_tensor, stream_of
from ._custom import custom_op


def _kv_commit_fake(
    caches: list[Tensor], base_len: Tensor, path: Tensor, accepted: Tensor, ring: bool = False
) -> None:
    return None


@custom_op("kv_commit", fake=_kv_commit_fake, mutates_args=("caches",))
def _kv_commit(
    caches: list[Tensor], base_len: Tensor, path: Tensor, accepted: Tensor, ring: bool = False
) -> None:
    C = ext()
    caps = [dl(c) for c in caches]
    C.kv_commit(caps, dl(base_len), dl(path), dl(accepted), stream_of(path), ring)


def kv_commit(
    caches: Sequence[Tensor],
    base_len: Tensor | int,
    path: Tensor,
    accepted: Tensor,
    ring: bool = False,
) -> None:
    """Move the accepted nodes' K/V rows into place, every layer in one call (ALGORITHMS.md §4).

    For each request b and ``j = 1..accepted[b]``, row ``base_len[b] + path[b, j]`` moves to
    ``base_len[b] + j`` in every cache. Overlapping rows are safe; an already-contiguous path is a
    no-op. The caller then sets the committed length to ``base_len + accepted + 1``. With
    ``ring`` the caches are rings (a sliding-window layer): row r lives in slot ``r % S``, any
    ``base_len >= 0`` is valid and path entries must be < S.

    Args:
        caches: contiguous ``[B, H, S, D]`` tensors, all the same shape and dtype (every layer's K
            and V), modified in place.
        base_len: ``[B]`` int32/int64 (or an int) committed length before the round.
        path: ``[B, P]`` int32/int64 from :func:`tree_walk` (``path[:, 0] = 0``).
        accepted: ``[B]`` int32/int64 accepted draft nodes.
        ring: the caches are rings of S slots (S = their dim 2).
    """
    caches = list(caches)
    for i, c in enumerate(caches):
        require_tensor(c, f"caches[{i}]")
    require_tensor(path, "path")
    require_tensor(accepted, "accepted")
    if not isinstance(base_len, Tensor):
        base_len = torch.full(
            (path.shape[0],), int(base_len), dtype=torch.int64, device=path.device
        )
    _kv_commit(caches, base_len, path, accepted, bool(ring))
