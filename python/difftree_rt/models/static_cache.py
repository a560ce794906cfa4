"""Preallocated static KV cache for the target model, behind the transformers ``Cache`` interface.

Shapes use the project vocabulary: B batch, H_k / H_v heads and D_k / D_v widths of a layer's
cached K / V rows, S_max cache capacity (rows), W sliding window, T query rows of one forward,
L tree depth.

Every layer that caches (:class:`~.target_layers.LayerSpec`) owns one contiguous K tensor
``[B, H_k, S_l, D_k]`` and one V tensor ``[B, H_v, S_l, D_v]``, allocated once: ``S_l = S_max``
for full attention, a ring of ``S_l = W - 1 + T_max`` slots for a sliding-window layer when that
is smaller (row r in slot ``r % S_l``; every forward has at most T_max rows). A forward never
appends by growing: before each forward the owner (``TargetAdapter``) sets the rows that query row
i is written to (``base_len + i``), and ``update`` scatters there. The committed length of each
request lives on the device (``base_len``, ``[B]`` int32) so a captured CUDA graph replays with
new lengths.

Two ways to bound the attention key span: eager mode keeps a host-side ``len_bound`` (exact
after prefill/decode, re-synced once per round after a commit); graph mode sets a fixed span
(:meth:`StaticKVCache.set_fixed_span`) so a round reads no host value and replays unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from ..reference.kv_commit import kv_commit_reference
from .linear_state import LinearStates
from .target_layers import LayerSpec

__all__ = ["StaticKVCache"]


def _kv_commit(
    caches: list[Tensor], base_len: Tensor, path: Tensor, accepted: Tensor, ring: bool
) -> None:
    """``difftree_rt.ops.kv_commit`` (C++/CUDA core) over caches of one shape; the plain-PyTorch
    reference only when the compiled extension is unavailable (same semantics)."""
    try:
        from .. import ops
        from .._ext import ext

        ext()
    except ImportError:
        kv_commit_reference(caches, base_len, path, accepted, ring=ring)
        return
    ops.kv_commit(caches, base_len, path, accepted, ring=ring)


class _StaticTreeLayer(CacheLayerMixin):
    """One layer's view of a ``StaticKVCache`` (keeps the ``CacheLayerMixin`` contract).

    The tensors are allocated by the owner; writes go through the owner so that all layers share
    the per-forward write rows.
    """

    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        owner: StaticKVCache,
        layer_idx: int,
        keys: Tensor | None,
        values: Tensor | None,
        spec: LayerSpec,
    ) -> None:
        super().__init__()
        self._owner = owner
        self._layer_idx = layer_idx
        self.keys = keys
        self.values = values
        self.is_initialized = True
        self.is_sliding = spec.window > 0
        self.dtype, self.device = owner.dtype, owner.device
        self.batch_size = owner.batch_size
        self.num_heads = spec.key[0]
        self.max_cache_len = keys.shape[2] if keys is not None else 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        # Preallocated in the owner's constructor; nothing to do.
        return None

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        return self._owner._write(self._layer_idx, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.max_length, 0

    def get_seq_length(self) -> int:
        return self._owner.get_seq_length()

    def get_max_length(self) -> int:
        return self._owner.max_length

    def reset(self) -> None:
        # Rows past `base_len` are never read, so resetting lengths (done by the owner) suffices.
        return None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("StaticKVCache does not support beam search reordering")


class StaticKVCache(Cache):
    """Preallocated per-layer K/V with explicit write rows.

    Attributes:
        specs: one :class:`~.target_layers.LayerSpec` per decoder layer.
        key_cache: the K tensor of every layer that caches, ``[B, H_k, S_l, D_k]``, contiguous,
            fixed address (in layer order; layers that reuse another's K/V have none).
        value_cache: the matching V tensors ``[B, H_v, S_l, D_v]``.
        base_len: ``[B]`` int32 on the device: committed rows per request.
        max_length: S_max.
        max_forward_rows: T_max, the most rows one forward may write (None: unbounded, and no
            layer is a ring).
        len_bound: host-side upper bound on ``max(base_len)``, kept without device syncs (exact
            after prefill/decode; loose after a commit until :meth:`sync_len_bound`).
        len_exact: whether ``len_bound`` is known to equal ``max(base_len)``.
        fixed_span: graph mode: a fixed key span (rows ``[0, fixed_span)`` hold every committed
            row of every forward until it is cleared), or None (eager: ``len_bound``).

    ``update`` (called by every HF attention layer) writes query row i of request b to row
    ``rows[b, i]`` set by :meth:`begin_write` (slot ``rows % S_l`` of a ring) and returns the
    whole layer buffers; the attention function decides what is visible (see
    ``tree_attention``).
    """

    def __init__(
        self,
        specs: list[LayerSpec],
        batch_size: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device | str,
        max_forward_rows: int | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_forward_rows is not None and (
            not isinstance(max_forward_rows, int)
            or isinstance(max_forward_rows, bool)
            or not 1 <= max_forward_rows <= max_length
        ):
            raise ValueError(
                f"max_forward_rows must be None or an int in [1, {max_length}], got "
                f"{max_forward_rows!r}"
            )
        if not specs:
            raise ValueError("specs: expected at least one layer")
        self.specs = list(specs)
        self.max_length = max_length
        self.max_forward_rows = max_forward_rows
        self.dtype = dtype
        self.device = torch.device(device)
        self.base_len: Tensor = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.key_cache: list[Tensor] = []
        self.value_cache: list[Tensor] = []
        # Per layer: its (K, V) buffers, or None when it reuses another layer's.
        self._buffers: list[tuple[Tensor, Tensor] | None] = []
        self._ring: list[bool] = []
        layers: list[Any] = []
        for spec in self.specs:
            slots = spec.slots(max_length, max_forward_rows)
            pair = None
            if spec.owns_cache:
                (h_k, d_k), (h_v, d_v) = spec.key, spec.value
                k = torch.zeros((batch_size, h_k, slots, d_k), dtype=dtype, device=device)
                v = torch.zeros((batch_size, h_v, slots, d_v), dtype=dtype, device=device)
                self.key_cache.append(k)
                self.value_cache.append(v)
                pair = (k, v)
            self._buffers.append(pair)
            self._ring.append(slots < max_length)
            keys, values = pair if pair is not None else (None, None)
            layers.append(_StaticTreeLayer(self, spec.index, keys, values, spec))
        super().__init__(layers=layers)
        # kv_commit groups: tensors of one shape and ring-ness go in one call.
        groups: dict[tuple[Any, ...], list[Tensor]] = {}
        for pair, ring in zip(self._buffers, self._ring, strict=True):
            for t in pair or ():
                groups.setdefault((tuple(t.shape), ring), []).append(t)
        self._commit_groups = [(ts, key[1]) for key, ts in groups.items()]
        # Linear-attention layers (Gated-DeltaNet): fixed-size states instead of rows.
        self.linear = LinearStates(self.specs, batch_size, dtype, self.device)
        self.len_bound = 0
        self.len_exact = True
        self.fixed_span: int | None = None
        self._write_rows: Tensor | None = None
        self._write_index: dict[tuple[int, int, int], Tensor] = {}

    @property
    def has_rings(self) -> bool:
        """Whether some layer keeps a ring (its forwards are bounded by ``max_forward_rows``)."""
        return any(self._ring)

    def is_ring(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx``'s buffers are a ring (row r in slot ``r % S_l``)."""
        return self._ring[layer_idx]

    @property
    def num_layers(self) -> int:
        return len(self.specs)

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return int(self.base_len.shape[0])

    # ----------------------------------------------------------------------------------------
    # Writes
    # ----------------------------------------------------------------------------------------
    def begin_write(self, rows: Tensor) -> None:
        """Set the cache rows for the next forward: query row i of request b goes to ``rows[b, i]``.

        Args:
            rows: ``[B, T]`` int64 on the cache device, all ``< S_max`` (the caller checks
                capacity); ``T <= max_forward_rows``.
        """
        if rows.dim() != 2 or rows.shape[0] != self.batch_size:
            raise ValueError(f"rows must be [B={self.batch_size}, T], got {tuple(rows.shape)}")
        cap = self.max_forward_rows
        if cap is not None and rows.shape[1] > cap:
            raise ValueError(
                f"a forward of {rows.shape[1]} rows exceeds max_forward_rows={cap} (the "
                "sliding-window layers' rings hold the window plus that many rows)"
            )
        self._write_rows = rows.to(device=self.device, dtype=torch.long)
        self._write_index = {}

    def end_write(self) -> None:
        """Forget the write rows, so a stray ``update`` outside a forward fails loudly."""
        self._write_rows = None
        self._write_index = {}

    def _index(self, heads: int, dim: int, slots: int) -> Tensor:
        # One expanded view per (H, D, slots), shared by the layers of that shape (no copy).
        key = (heads, dim, slots)
        index = self._write_index.get(key)
        if index is None:
            rows = self._write_rows
            assert rows is not None
            if slots < self.max_length:
                rows = rows % slots
            index = rows[:, None, :, None].expand(rows.shape[0], heads, rows.shape[1], dim)
            self._write_index[key] = index
        return index

    def _write(
        self, layer_idx: int, key_states: Tensor, value_states: Tensor
    ) -> tuple[Tensor, Tensor]:
        if self._write_rows is None:
            raise RuntimeError(
                "StaticKVCache.update was called outside a TargetAdapter forward: no write rows "
                "set (call begin_write(rows) first)"
            )
        pair = self._buffers[layer_idx]
        if pair is None:
            raise RuntimeError(f"layer {layer_idx} reuses another layer's K/V but called update")
        k_buf, v_buf = pair
        num_b, num_t = self._write_rows.shape
        want_k = (num_b, k_buf.shape[1], num_t, k_buf.shape[3])
        want_v = (num_b, v_buf.shape[1], num_t, v_buf.shape[3])
        if tuple(key_states.shape) != want_k or tuple(value_states.shape) != want_v:
            raise ValueError(
                f"layer {layer_idx}: key/value states {tuple(key_states.shape)} / "
                f"{tuple(value_states.shape)} do not match the cache rows [B, H, T, D] = "
                f"{want_k} / {want_v}"
            )
        slots = k_buf.shape[2]
        k_buf.scatter_(2, self._index(want_k[1], want_k[3], slots), key_states.to(k_buf.dtype))
        v_buf.scatter_(2, self._index(want_v[1], want_v[3], slots), value_states.to(v_buf.dtype))
        return k_buf, v_buf

    def update(
        self,
        key_states: Tensor,
        value_states: Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        """HF hook: write ``[B, H_kv, T, D]`` states at the current write rows of ``layer_idx``.

        Returns the whole layer buffers ``[B, H_kv, S_max, D]`` (visibility is the attention
        function's job, driven by ``base_len``).
        """
        return self._write(layer_idx, key_states, value_states)

    # ----------------------------------------------------------------------------------------
    # Lengths
    # ----------------------------------------------------------------------------------------
    def advance(self, num_rows: int) -> None:
        """``base_len += num_rows`` for every request (causal append of T rows)."""
        self.base_len.add_(num_rows)
        self.len_bound += num_rows

    def sync_len_bound(self) -> int:
        """Make ``len_bound`` exact by reading ``max(base_len)`` (one device->host sync)."""
        self.len_bound = int(self.base_len.max().item()) if self.base_len.numel() else 0
        self.len_exact = True
        return self.len_bound

    def set_fixed_span(self, span: int | None) -> None:
        """Graph mode: attend over the fixed key span ``[0, span)`` (masked by ``base_len``)
        instead of the host bound, and skip host-side capacity checks (the caller guarantees
        ``max(base_len) + rows <= S_max``). ``None`` returns to the eager host bound, which is
        then loose until the next :meth:`sync_len_bound`.

        Args:
            span: ``1..S_max`` rows, or None.
        """
        if span is not None:
            ok = isinstance(span, int) and not isinstance(span, bool)
            if not ok or not 1 <= span <= self.max_length:
                raise ValueError(
                    f"span must be None or an int in [1, {self.max_length}], got {span!r}"
                )
        elif self.fixed_span is not None:
            # Commits in graph mode did not track the bound: derive it again (cheap, lazily).
            self.len_bound = self.max_length
            self.len_exact = False
        self.fixed_span = span

    def key_span(self) -> int:
        """Rows of the key prefix attention scans: the fixed span in graph mode, else the host
        bound (no sync either way)."""
        return self.fixed_span if self.fixed_span is not None else self.len_bound

    def commit(self, path: Tensor, accepted: Tensor, active: Tensor | None = None) -> None:
        """Move the accepted path's rows into place in every layer, then advance ``base_len``.

        Args:
            path: ``[B, L+1]`` node indices of the accepted path (``path[:, 0] == 0``).
            accepted: ``[B]`` accepted draft nodes; ``base_len += accepted + 1``.
            active: optional ``[B]`` bool on the device: inactive requests (finished, in graph
                mode) move no row and keep their length, without a host branch.
        """
        acc = accepted.to(device=self.device, dtype=self.base_len.dtype)
        step = acc + 1
        if active is not None:
            act = active.to(device=self.device, dtype=self.base_len.dtype)
            acc = acc * act
            step = step * act
        # The single call site of the commit kernel (one call per group of same-shaped K/V
        # tensors); a one-column path (the root alone: "ar") moves no row.
        if path.shape[1] > 1:
            for tensors, ring in self._commit_groups:
                _kv_commit(tensors, self.base_len, path, acc, ring)
        self.linear.commit(path, accepted, active)
        self.base_len.add_(step)
        # accepted <= L, so the bound grows by at most L + 1 (no sync needed).
        self.len_bound = min(self.len_bound + path.shape[1], self.max_length)
        self.len_exact = False

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Upper bound on the longest committed length (``len_bound``; never syncs).

        transformers only consults it for defaults the adapter always passes explicitly.
        """
        return self.len_bound

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.max_length, 0

    def reset(self) -> None:
        """Forget every request's context (lengths to 0; K/V buffers are kept, not zeroed;
        linear-attention states are zeroed: they are the whole context of their layers)."""
        self.base_len.zero_()
        self.linear.reset()
        self.len_bound = 0
        self.len_exact = True
        self.fixed_span = None
        self.end_write()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "StaticKVCache lengths are per request on the device; use TargetAdapter.commit"
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("StaticKVCache does not support beam search reordering")

    def __repr__(self) -> str:
        rings = sum(self._ring)
        return (
            f"StaticKVCache(layers={self.num_layers}, B={self.batch_size}, "
            f"S_max={self.max_length}, ring layers={rings}, dtype={self.dtype}, "
            f"device={self.device})"
        )
