"""Preallocated static KV cache for the target model, behind the transformers ``Cache`` interface.

Shapes use the project vocabulary: B batch, H_kv key/value heads, S_max cache capacity (rows),
D head dim, T query rows of one forward, L tree depth.

Every layer owns one contiguous K and one contiguous V tensor ``[B, H_kv, S_max, D]``, allocated
once. A forward never appends by growing: before each forward the owner (``TargetAdapter``) sets the
rows that query row i is written to (``base_len + i``), and ``update`` scatters there. The committed
length of each request lives on the device (``base_len``, ``[B]`` int32) so a captured CUDA graph
replays with new lengths.

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

__all__ = ["StaticKVCache"]


def _kv_commit(caches: list[Tensor], base_len: Tensor, path: Tensor, accepted: Tensor) -> None:
    """``difftree_rt.ops.kv_commit`` (C++/CUDA core); the plain-PyTorch reference only when the
    compiled extension is unavailable (same semantics)."""
    try:
        from .. import ops
        from .._ext import ext

        ext()
    except ImportError:
        kv_commit_reference(caches, base_len, path, accepted)
        return
    ops.kv_commit(caches, base_len, path, accepted)


class _StaticTreeLayer(CacheLayerMixin):
    """One layer's view of a ``StaticKVCache`` (keeps the ``CacheLayerMixin`` contract).

    The tensors are allocated by the owner; writes go through the owner so that all layers share
    the per-forward write rows.
    """

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, owner: StaticKVCache, layer_idx: int, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self._owner = owner
        self._layer_idx = layer_idx
        self.keys = keys
        self.values = values
        self.is_initialized = True
        self.dtype, self.device = keys.dtype, keys.device
        self.batch_size, self.num_heads = keys.shape[0], keys.shape[1]
        self.max_cache_len = keys.shape[2]

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        # Preallocated in the owner's constructor; nothing to do.
        return None

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        return self._owner._write(self._layer_idx, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def get_seq_length(self) -> int:
        return self._owner.get_seq_length()

    def get_max_length(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        # Rows past `base_len` are never read, so resetting lengths (done by the owner) suffices.
        return None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("StaticKVCache does not support beam search reordering")


class StaticKVCache(Cache):
    """Preallocated per-layer K/V ``[B, H_kv, S_max, D]`` with explicit write rows.

    Attributes:
        key_cache: one K tensor per layer, ``[B, H_kv, S_max, D]``, contiguous, fixed address.
        value_cache: one V tensor per layer, same shape.
        base_len: ``[B]`` int32 on the device: committed rows per request.
        max_length: S_max.
        len_bound: host-side upper bound on ``max(base_len)``, kept without device syncs (exact
            after prefill/decode; loose after a commit until :meth:`sync_len_bound`).
        len_exact: whether ``len_bound`` is known to equal ``max(base_len)``.
        fixed_span: graph mode: a fixed key span (rows ``[0, fixed_span)`` hold every committed
            row of every forward until it is cleared), or None (eager: ``len_bound``).

    ``update`` (called by every HF attention layer) writes query row i of request b to row
    ``rows[b, i]`` set by :meth:`begin_write` and returns the whole layer buffers; the attention
    function decides what is visible (see ``tree_attention``).
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("batch_size", batch_size),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
            ("max_length", max_length),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.key_cache: list[Tensor] = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        self.value_cache: list[Tensor] = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)
        ]
        layers: list[Any] = [
            _StaticTreeLayer(self, i, k, v)
            for i, (k, v) in enumerate(zip(self.key_cache, self.value_cache, strict=True))
        ]
        super().__init__(layers=layers)
        self.max_length = max_length
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.base_len: Tensor = torch.zeros(batch_size, dtype=torch.int32, device=device)
        self.len_bound = 0
        self.len_exact = True
        self.fixed_span: int | None = None
        self._write_rows: Tensor | None = None
        self._write_index: Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.key_cache)

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
                capacity).
        """
        if rows.dim() != 2 or rows.shape[0] != self.batch_size:
            raise ValueError(f"rows must be [B={self.batch_size}, T], got {tuple(rows.shape)}")
        rows = rows.to(device=self.device, dtype=torch.long)
        num_b, num_t = rows.shape
        self._write_rows = rows
        # One expanded view reused by every layer (no copy): index for scatter_ along dim 2.
        self._write_index = rows[:, None, :, None].expand(
            num_b, self.num_kv_heads, num_t, self.head_dim
        )

    def end_write(self) -> None:
        """Forget the write rows, so a stray ``update`` outside a forward fails loudly."""
        self._write_rows = None
        self._write_index = None

    def _write(
        self, layer_idx: int, key_states: Tensor, value_states: Tensor
    ) -> tuple[Tensor, Tensor]:
        index = self._write_index
        if index is None:
            raise RuntimeError(
                "StaticKVCache.update was called outside a TargetAdapter forward: no write rows "
                "set (call begin_write(rows) first)"
            )
        if key_states.shape != index.shape or value_states.shape != index.shape:
            raise ValueError(
                f"layer {layer_idx}: key/value states {tuple(key_states.shape)} / "
                f"{tuple(value_states.shape)} do not match the write rows "
                f"[B, H_kv, T, D]={tuple(index.shape)}"
            )
        k_buf = self.key_cache[layer_idx]
        v_buf = self.value_cache[layer_idx]
        k_buf.scatter_(2, index, key_states.to(k_buf.dtype))
        v_buf.scatter_(2, index, value_states.to(v_buf.dtype))
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
        # The single call site of the commit kernel (one call for every layer's K and V); a
        # one-column path (the root alone: "ar") moves no row.
        if path.shape[1] > 1:
            _kv_commit(self.key_cache + self.value_cache, self.base_len, path, acc)
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
        """Forget every request's context (lengths to 0; buffers are kept, not zeroed)."""
        self.base_len.zero_()
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
        return (
            f"StaticKVCache(layers={self.num_layers}, B={self.batch_size}, "
            f"H_kv={self.num_kv_heads}, S_max={self.max_length}, D={self.head_dim}, "
            f"dtype={self.dtype}, device={self.device})"
        )
