"""Descriptors torch can express that no op may trust: stride-0 (``expand``) views whose byte span
overflows int64 although torch's element count fits. The core must reject them at intake with a
ValueError naming the argument, before any output is allocated or any row is read. (Negative
extents, NULL shapes and element counts that wrap are C ABI cases: cpp/tests/test_descriptors.cpp.)
"""

from __future__ import annotations

import pytest
import torch

from difftree_rt import ops


def _huge(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A stride-0 view of one real row: ``shape`` with only the last dim backed by memory."""
    row = torch.zeros(*([1] * (len(shape) - 1)), shape[-1], dtype=dtype)
    return row.expand(*shape)


def test_tree_attention_rejects_a_cache_whose_byte_span_overflows() -> None:
    # [B, H_kv, S_max, D] = [2^15, 2^6, 2^30, 2^11]: 2^62 elements (torch accepts), 2^63 bytes.
    B, H, S, D = 1 << 15, 1 << 6, 1 << 30, 1 << 11
    k_cache = _huge((B, H, S, D), torch.float16)
    assert k_cache.numel() == 1 << 62
    q = _huge((B, H, 1, D), torch.float16)
    prefix_len = torch.zeros(B, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"^k_cache: .*int64"):
        ops.tree_attention(q, k_cache, k_cache, prefix_len, None, None, D**-0.5, is_chain=True)


def test_kv_commit_rejects_a_broadcast_cache() -> None:
    caches = [_huge((1, 1 << 31, 1 << 31, 1), torch.float32)]
    path = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match=r"^caches\[0\]: .*int64"):
        ops.kv_commit(caches, torch.tensor([0]), path, torch.tensor([1]))
