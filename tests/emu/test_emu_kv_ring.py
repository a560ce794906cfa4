"""cuda/kv_commit.cu over ring caches (row r in slot r % S) through the CUDA emulator, against
the CPU op: equal caches after wrap-around commits (16-byte and byte rows)."""

from __future__ import annotations

import pytest
import torch
from emu_kernels import EmuKernels
from tests.ops.test_kv_commit_ring import ring_case

from difftree_rt import ops


@pytest.fixture(scope="module")
def emu(emu_lib) -> EmuKernels:  # type: ignore[no-untyped-def]
    kernels = EmuKernels(emu_lib)
    kernels.config(threads=0, schedule=2)  # random thread order between barriers
    return kernels


@pytest.mark.parametrize("seed", range(12))
def test_kv_commit_ring(emu: EmuKernels, seed: int) -> None:
    S = [5, 8, 16, 33][seed % 4]
    dtype = [torch.bfloat16, torch.float32, torch.uint8][seed % 3]
    caches, base, path, accepted = ring_case(seed, S, B=1 + seed % 3, P=1 + (seed * 5) % 12)
    caches = [c.to(dtype) for c in caches]
    emulated = [c.clone() for c in caches]
    ops.kv_commit(caches, base, path, accepted, ring=True)
    emu.kv_commit(emulated, base, path, accepted, ring=True)
    for c, e in zip(caches, emulated, strict=True):
        assert torch.equal(c, e)
