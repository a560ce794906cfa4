"""Shared fixtures and input generators for the difftree_rt tests."""

from __future__ import annotations

import pytest
import torch

cuda_available = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not cuda_available:
            item.add_marker(skip)


def random_logits(
    gen: torch.Generator, B: int, L: int, V: int, *, ties: bool = False, neg_inf: bool = False
) -> torch.Tensor:
    """Peaked random logits like a drafter's; optionally with exact ties and -inf entries."""
    scale = float(torch.empty(()).uniform_(0.5, 6.0, generator=gen))
    x = torch.randn((B, L, V), generator=gen) * scale
    if ties:
        x = torch.round(x)  # many exactly equal logits -> exactly equal log-probs
    if neg_inf and V > 1:
        mask = torch.rand((B, L, V), generator=gen) < 0.3
        mask[..., 0] = False  # keep at least one finite entry per row
        x = x.masked_fill(mask, float("-inf"))
    return x
