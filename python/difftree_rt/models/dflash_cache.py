"""The drafter's context cache: per-layer K/V of the committed context rows, fixed storage.

Vocabulary: B batch, Hkv key/value heads, C capacity (rows), D head dim, n rows written,
R ring rows of a windowed layer, W its window, S block size.

A full-attention layer stores context row t at row t ([B, Hkv, C, D]). A windowed layer only
ever reads the last W context rows, so it stores a ring ([B, Hkv, R + 1, D], R = W + 2S):
context (and block) position p at row ``p mod R``, committed in place; row R is a trash row
that takes the appended rows the ring does not keep (padding, rows already out of the window),
so a long append never writes two rows to one live slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DFlashCache", "ring_positions", "write_rows"]


class DFlashCache:
    """Per-layer K/V of the drafter's context rows, in fixed preallocated storage.

    ``keys[l]`` / ``values[l]`` are [B, Hkv, capacity, D] for a full-storage layer: row t of
    request b holds the rotated key of context row t (position t) for ``t < lengths[b]``. Rows
    past a request's length are scratch (padding rows of an append, block rows of the current
    round), never part of the context. A ring layer (``rings[l] = R``) is [B, Hkv, R + 1, D]
    and holds position p at row ``p mod R`` (see the module docstring).

    ``lengths`` is a LongTensor [B] on the cache's device, so requests may differ in length;
    drafting never reads it on the host. The capacity is fixed at construction (nothing grows):
    size it for the longest context plus the appended and block rows (plus ``R * S`` scratch
    rows for :meth:`DFlashDrafter.draft_branches`); ring layers hold their ring whatever the
    capacity. Writes past the capacity are errors, never silent: a ``ValueError`` where the
    host-side ``length_floor`` proves the overflow, otherwise the row scatter's own index check.

    ``length_floor`` is a host-side lower bound on ``max(lengths)``: the rows appended without
    a ``num_new`` count since the last :meth:`reset` (crops lower it). It costs no device read.

    A ring keeps the rows a crop could bring back only ``crop_slack`` deep: a crop may drop at
    most ``crop_slack`` rows below the longest length drafted at since the rows were appended
    (an int crop that provably drops more is a ``ValueError``; a tensor crop is not checked).
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
        rings: Sequence[int | None] | None = None,
        crop_slack: int | None = None,
    ) -> None:
        self.rings: list[int | None] = [None] * num_layers if rings is None else list(rings)
        if len(self.rings) != num_layers:
            raise ValueError(f"rings has {len(self.rings)} entries for {num_layers} layers")
        if any(r is not None and r < 1 for r in self.rings):
            raise ValueError(f"ring sizes must be >= 1, got {self.rings}")
        self._capacity = max(int(capacity), 1)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for ring in self.rings:
            rows = self._capacity if ring is None else ring + 1  # + the trash row
            shape = (batch_size, num_kv_heads, rows, head_dim)
            self.keys.append(torch.zeros(shape, dtype=dtype, device=device))
            self.values.append(torch.zeros(shape, dtype=dtype, device=device))
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length_floor = 0
        self.crop_slack = crop_slack

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        """Context + scratch rows per request (the logical size; ring layers store less)."""
        return self._capacity if self.keys else 0

    @property
    def layer_rows(self) -> list[int]:
        """Rows each layer stores per request and KV head (capacity, or ring + 1)."""
        return [k.shape[2] for k in self.keys]

    @property
    def nbytes(self) -> int:
        """Bytes of K/V storage over all layers."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

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
            slack = self.crop_slack
            if slack is not None and self.length_floor - int(length) > slack:
                raise ValueError(
                    f"crop to {length} drops {self.length_floor - int(length)} rows of a "
                    f"windowed layer's ring, which keeps only {slack} rows to roll back"
                )
            self.lengths.clamp_(max=length)
            self.length_floor = min(self.length_floor, int(length))

    def reset(self) -> None:
        self.lengths.zero_()
        self.length_floor = 0


def write_rows(store: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> None:
    """Write rows [B, Hkv, n, D] into store [B, Hkv, C, D] at per-request slots [B, n].

    A scatter (``index_copy_`` for B = 1: the same rows, about half the cost): an index past C
    is an error (on the device: an assert), never a silent write. Several rows may go to one
    slot only where that slot is never read (a ring's trash row).
    """
    if store.shape[0] == 1:
        store.index_copy_(2, slots[0], rows)
    else:
        store.scatter_(2, slots[:, None, :, None].expand(rows.shape), rows)


def ring_positions(newest: torch.Tensor, ring: int) -> torch.Tensor:
    """The position each ring row holds when the newest position written is ``newest - 1``:
    newest [B] -> [B, R], row s holding the p in ``[newest - R, newest)`` with ``p = s mod R``
    (negative: never written for this request)."""
    base = newest[:, None] - ring
    slots = torch.arange(ring, device=newest.device)[None]
    return base + torch.remainder(slots - base, ring)
