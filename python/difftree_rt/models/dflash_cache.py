"""The drafter's context cache: per-layer K/V of the committed context rows, fixed storage.

Vocabulary: B batch, Hkv key/value heads, C capacity (rows), D head dim, n rows written.
"""

from __future__ import annotations

import torch

__all__ = ["DFlashCache", "write_rows"]


class DFlashCache:
    """Per-layer K/V of the drafter's context rows, in fixed preallocated storage.

    ``keys[l]`` / ``values[l]`` are [B, Hkv, capacity, D]; row t of request b holds the rotated
    key of context row t (position t) for ``t < lengths[b]``. Rows past a request's length are
    scratch (padding rows of an append, block rows of the current round), never part of the
    context.

    ``lengths`` is a LongTensor [B] on the cache's device, so requests may differ in length;
    drafting never reads it on the host. The capacity is fixed at construction (nothing grows):
    size it for the longest context plus the appended and block rows (plus ``R * S`` scratch
    rows for :meth:`DFlashDrafter.draft_branches`). Writes past it are errors, never silent:
    a ``ValueError`` where the host-side ``length_floor`` proves the overflow, otherwise the
    row scatter's own index check.

    ``length_floor`` is a host-side lower bound on ``max(lengths)``: the rows appended without
    a ``num_new`` count since the last :meth:`reset` (crops lower it). It costs no device read.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (batch_size, num_kv_heads, max(int(capacity), 1), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length_floor = 0

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def device(self) -> torch.device:
        return self.lengths.device

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    def crop(self, length: int | torch.Tensor) -> None:
        """Truncate every request to at most ``length`` rows (int, or LongTensor [B])."""
        if isinstance(length, torch.Tensor):
            self.lengths = torch.minimum(self.lengths, length.to(self.lengths))
            self.length_floor = 0  # the new maximum would need a device read
        else:
            if length < 0:
                raise ValueError(f"crop length must be >= 0, got {length}")
            self.lengths.clamp_(max=length)
            self.length_floor = min(self.length_floor, int(length))

    def reset(self) -> None:
        self.lengths.zero_()
        self.length_floor = 0


def write_rows(store: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> None:
    """Write rows [B, Hkv, n, D] into store [B, Hkv, C, D] at per-request slots [B, n].

    A scatter (``index_copy_`` for B = 1: the same rows, about half the cost): an index past C
    is an error (on the device: an assert), never a silent write.
    """
    if store.shape[0] == 1:
        store.index_copy_(2, slots[0], rows)
    else:
        store.scatter_(2, slots[:, None, :, None].expand(rows.shape), rows)
