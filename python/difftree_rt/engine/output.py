"""What ``SpeculativeDecoder.generate`` returns, and small helpers its solo and batch paths
share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .stats import GenerationStats

__all__ = ["CACHE_ROUND", "GenerationOutput", "is_int"]

# Rows of headroom when the decoder sizes the target cache itself (max_length=None): rounding
# up avoids re-allocating the cache for every slightly longer request.
CACHE_ROUND = 256


@dataclass
class GenerationOutput:
    """Result of :meth:`SpeculativeDecoder.generate`.

    Attributes:
        sequences: int64 ``[B, T + new]``: each (left-padded) prompt row followed by its
            generated tokens (the stop token included when one ended the request), like HF
            ``generate``; ``new`` is the longest request's count and shorter rows are padded
            with ``pad_token_id`` after their last token.
        stats: per-round accepted lengths, τ, rounds, time per phase; for a batch the
            aggregate over its requests (see :class:`GenerationStats`).
        prompt_lengths: int64 ``[B]``: real (unpadded) prompt tokens per request.
        new_lengths: int64 ``[B]``: generated tokens per request (row b's new tokens are
            ``sequences[b, T : T + new_lengths[b]]``).
        request_stats: one :class:`GenerationStats` per request (``[stats]`` for B = 1); the
            times in them are the whole batch's.
    """

    sequences: Tensor
    stats: GenerationStats
    prompt_lengths: Tensor | None = None
    new_lengths: Tensor | None = None
    request_stats: list[GenerationStats] = field(default_factory=list)


def is_int(x: object) -> bool:
    """A Python int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def per_request(value: Any, name: str, num_b: int) -> list[Any]:
    """A generate argument for every request: a scalar repeated, or a sequence of exactly B
    per-request values (``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != num_b:
            raise ValueError(
                f"{name}: a sequence of per-request values must have B={num_b} entries, "
                f"got {len(values)}"
            )
        return values
    return [value] * num_b
