"""Fixtures for the engine tests: tiny CPU fp32 models, built once per session."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_drafter, make_target, train_drafter  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models: one thread is fastest and immune to oversubscribed CI machines.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.lru_cache(maxsize=None)
def random_pair(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random target (V=128) and a random drafter (block 8) for ``arch``."""
    target = make_target(arch)
    return target, make_drafter(target)


@functools.lru_cache(maxsize=None)
def trained_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A small-vocabulary target (V=32) and a drafter trained on its greedy continuations, so
    acceptance is realistic (τ well above 1, full-depth paths happen)."""
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        target = make_target("qwen3", vocab=32, seed=1)
        drafter = make_drafter(target, seed=1)
        train_drafter(target, drafter, steps=400, num_seqs=128, lr=1e-2)
    return target, drafter
