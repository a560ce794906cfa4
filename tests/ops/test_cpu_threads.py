"""The core's CPU thread cap follows torch.get_num_threads() (difftree/threads.h)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from difftree_rt._ext import ext


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    ext()


def test_cap_follows_torch_num_threads(restore_threads: None) -> None:
    torch.set_num_threads(1)
    assert ext().max_threads() == 1
    torch.set_num_threads(3)  # a changed count is handed on at the next op
    assert ext().max_threads() == 3
    torch.set_num_threads(1)
    assert ext().max_threads() == 1


def test_cap_default_is_at_least_one(restore_threads: None) -> None:
    m = ext()
    m.set_max_threads(0)  # n < 1 restores the default (hardware threads)
    assert m.max_threads() >= 1
    m.set_max_threads(5)
    assert m.max_threads() == 5
    torch.set_num_threads(5)
    assert ext().max_threads() == 5
