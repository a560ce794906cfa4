"""The PRESTO prior: an n-gram count table over the prompt and the generated tokens.

Vocabulary: T stream length, H table slots (a power of two), n the order.

The table lives in two CPU tensors (``keys int64 [H]``, ``counts int32 [H]``) that the core's
``presto_select`` reads and ``ngram_update`` extends in place, so the model is incremental:
each round adds only the newly committed tokens. Smoothing (cpu/presto.cpp):
``p_0 = 1/V``, ``p_m(t | h) = (c(h, t) + α p_{m-1}(t)) / (c(h) + α)`` for m = 1..n, stopping at
the first order whose context is unavailable or unseen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NGramPrior"]


class NGramPrior:
    """Incremental n-gram counts of one token stream (one request).

    Args:
        order: n (1..8).
        capacity: initial table slots (rounded up to a power of two); the table doubles when
            its load would pass 1/2.
    """

    def __init__(self, order: int = 3, capacity: int = 1 << 12) -> None:
        if not isinstance(order, int) or not 1 <= order <= 8:
            raise ValueError(f"order must be an int in [1, 8], got {order!r}")
        self.order = order
        self._initial = max(16, 1 << (max(1, capacity) - 1).bit_length())
        self.reset()

    def reset(self) -> None:
        """Forget the stream (a new request)."""
        self.stream: list[int] = []
        self._alloc(self._initial)

    def _alloc(self, size: int) -> None:
        self.keys = torch.zeros(size, dtype=torch.int64)
        self.counts = torch.zeros(size, dtype=torch.int32)
        self.used = 0

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[0])

    def extend(self, tokens: Sequence[int]) -> None:
        """Append committed tokens to the stream and count their n-grams."""
        from .. import ops

        new = [int(t) for t in tokens]
        if not new:
            return
        # Each token adds at most 2 * order keys; grow (rebuild once, from the stream) before
        # the load could pass 1/2, so probing stays short and inserts never fail.
        need = self.used + 2 * self.order * len(new)
        if 2 * need > self.capacity:
            size = self.capacity
            while 2 * need > size:
                size *= 2
            self._alloc(size)
            hist, start = [], 0
            new = self.stream + new
            self.stream = []
        else:
            hist = self.stream[-(self.order - 1) :] if self.order > 1 else []
            start = len(hist)
        toks = torch.tensor(hist + new, dtype=torch.int64)
        self.used += ops.ngram_update(self.keys, self.counts, toks, start, self.order)
        self.stream.extend(new)

    def sync(self, stream: Sequence[int] | Tensor) -> None:
        """Make the counted stream equal ``stream`` (``[T]``): appends the new tail when the
        current stream is its prefix (the per-round case), else starts over (a new request)."""
        toks = stream.reshape(-1).tolist() if isinstance(stream, Tensor) else list(stream)
        n = len(self.stream)
        if len(toks) >= n and toks[:n] == self.stream:
            self.extend(toks[n:])
        else:
            self.reset()
            self.extend(toks)

    def context(self) -> Tensor:
        """int64 ``[order - 1]``: the stream's last ``order - 1`` tokens, left-padded with -1."""
        c = self.order - 1
        tail = self.stream[-c:] if c > 0 else []
        return torch.tensor([-1] * (c - len(tail)) + tail, dtype=torch.int64)
