"""cuda/kv_commit.cu over ring caches (row r in slot r % S) against the CPU op, on a GPU machine
(skipped elsewhere; the emulated kernel is tested on the host in tests/emu/test_emu_kv_ring.py)."""

from __future__ import annotations

import pytest
import torch
from tests.ops.test_kv_commit_ring import ring_case

from difftree_rt import build_info, ops

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"] or not torch.cuda.is_available():
        pytest.skip("needs a GPU and difftree_rt built with CUDA kernels")


@pytest.mark.parametrize("seed", range(16))
def test_kv_commit_ring_cuda_matches_cpu(seed: int) -> None:
    S = [5, 8, 16, 33][seed % 4]
    dtype = [torch.bfloat16, torch.float16, torch.float32][seed % 3]
    caches, base, path, accepted = ring_case(seed, S, B=1 + seed % 3, P=1 + (seed * 5) % 12)
    caches = [c.to(dtype) for c in caches]
    gpu = [c.cuda() for c in caches]
    ops.kv_commit(caches, base, path, accepted, ring=True)
    ops.kv_commit(gpu, base.cuda(), path.cuda(), accepted.cuda(), ring=True)
    for c, g in zip(caches, gpu, strict=True):
        assert torch.equal(c, g.cpu())
