"""cuda/ddtree_select.cu, caddtree_select.cu, taps_select.cu and d2sd.cu run on the host through
the CUDA emulator (tools/cuda_emu) against the CPU ops, bit for bit: seeded cases with ties,
budget 1, N not a multiple of 32, lattices smaller than the budget, the shared-memory and the
workspace paths, threads in varied orders. The GPU tests (tests/ops/test_cuda_policies.py,
test_cuda_d2sd.py, test_cuda_kernels.py) run the same kernels on a device."""

from __future__ import annotations

import pytest
import torch
from emu_kernels import EmuKernels
from tests.conftest import random_logits
from tests.ops.kernel_cases import cost_rows, d2sd_select_case, d2sd_trunk_logprob, taps_case
from tests.ops.tree_checks import assert_trees_identical

from difftree_rt import ops


@pytest.fixture(scope="module")
def emu(emu_lib) -> EmuKernels:  # type: ignore[no-untyped-def]
    kernels = EmuKernels(emu_lib)
    kernels.config(threads=0, schedule=2)  # random thread order between barriers
    return kernels


def _candidates(seed: int, B: int, L: int, V: int, k: int, ties: bool):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    x = random_logits(gen, B, L, V, ties=ties, neg_inf=seed % 3 == 0)
    tok, lp = ops.topk_logprobs(x, max(1, min(k, V)))
    return gen, tok, lp


DDTREE_CASES = [
    # (B, L, V, budget)
    (1, 1, 1, 1),
    (2, 3, 2, 1),
    (1, 15, 33, 16),
    (3, 15, 151, 63),
    (2, 7, 3, 100),  # the lattice holds fewer nodes than the budget
    (1, 15, 1000, 255),
    (2, 40, 9, 300),
    (1, 15, 700, 1023),
]


@pytest.mark.parametrize(("B", "L", "V", "budget"), DDTREE_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_ddtree_select(emu: EmuKernels, B: int, L: int, V: int, budget: int, ties: bool) -> None:
    gen, tok, lp = _candidates(B * 131 + L * 17 + V + budget + ties, B, L, V, budget, ties)
    root = torch.randint(0, V, (B,), generator=gen)
    for r in (root, None):
        cpu = ops.ddtree_select_from_candidates(tok, lp, budget, r)
        assert_trees_identical(cpu, emu.ddtree_select(tok, lp, budget, r), (B, L, V, budget, ties))


@pytest.mark.parametrize(("B", "L", "V", "budget"), DDTREE_CASES)
@pytest.mark.parametrize("kind", ["convex", "flat", "steep"])
def test_caddtree_select(emu: EmuKernels, B: int, L: int, V: int, budget: int, kind: str) -> None:
    gen, tok, lp = _candidates(B * 7 + L + V * 3 + budget, B, L, V, budget, kind == "flat")
    verify, draft = cost_rows(gen, B, budget, kind)
    root = torch.randint(0, V, (B,), generator=gen)
    cpu = ops.caddtree_select_from_candidates(tok, lp, budget, verify, draft, root)
    assert_trees_identical(
        cpu, emu.caddtree_select(tok, lp, budget, verify, draft, root), (B, L, V, kind)
    )


TAPS_CASES = [
    # (B, L, V, width, pool_size, budget)
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 3, 6, 1),
    (3, 7, 40, 8, 30, 5),
    (1, 15, 300, 40, 90, 20),
    (2, 15, 300, 64, 128, 64),
    (1, 15, 1000, 100, 200, 33),
    (2, 40, 9, 9, 300, 100),
    (1, 15, 2000, 512, 1024, 700),
]


@pytest.mark.parametrize(("B", "L", "V", "width", "pool_size", "budget"), TAPS_CASES)
@pytest.mark.parametrize("kind", ["rand", "ties", "zero"])
def test_taps_select(emu: EmuKernels, B, L, V, width, pool_size, budget, kind) -> None:  # type: ignore[no-untyped-def]
    pool, log_qc, _ = taps_case(B + L * 3 + V + width + pool_size + budget, B, L, V, width,
                                pool_size, kind)  # fmt: skip
    args = (pool.token.contiguous(), pool.parent.contiguous(), pool.size.contiguous(),
            log_qc.contiguous())  # fmt: skip
    cpu = ops.taps_select(*args, budget, max_depth=L)
    got = emu.taps_select(*args, budget)
    assert_trees_identical(cpu, got, (B, L, V, width, pool_size, budget, kind))


@pytest.mark.parametrize("seed", range(16))
def test_d2sd_boundaries(emu: EmuKernels, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, L = 1 + seed % 3, [1, 4, 15, 40][seed % 4]
    k = min(L, [1, 4, 7][seed % 3])
    lp = d2sd_trunk_logprob(gen, B, L, ["rand", "ties", "peaked", "flat"][seed % 4])
    cpu = ops.d2sd_boundaries(lp, k)
    assert torch.equal(emu.d2sd_boundaries(lp, cpu.shape[1]), cpu.to(torch.int32)), seed


D2SD_CASES = [
    # (B, L1, L2, K, V, budget)
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 2, 2, 1),
    (3, 15, 15, 4, 3, 16),
    (2, 15, 15, 4, 50, 64),
    (1, 7, 15, 4, 9, 33),
    (2, 15, 7, 6, 9, 200),
    (1, 31, 17, 15, 4, 100),
    (1, 40, 63, 40, 7, 1000),  # the workspace path
]


@pytest.mark.parametrize(("B", "L1", "L2", "K", "V", "budget"), D2SD_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_d2sd_select(emu: EmuKernels, B, L1, L2, K, V, budget, ties) -> None:  # type: ignore[no-untyped-def]
    *args, root = d2sd_select_case(B + L1 * 3 + L2 * 5 + K * 7 + V + budget + ties, B, L1, L2, K,
                                   V, ties)  # fmt: skip
    cpu = ops.d2sd_select(*args, budget, root)
    assert_trees_identical(cpu, emu.d2sd_select(*args, budget, root), (B, L1, L2, K, V, budget))
