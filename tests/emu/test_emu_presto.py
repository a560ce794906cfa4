"""cuda/presto.cu's kernels run on the host through the CUDA emulator (tools/cuda_emu) against
the CPU ops: the same trees bit for bit and the same table counts, with the threads of a block
run in forward, reverse and random order between barriers and at other block sizes, and shared
memory / workspace filled with garbage. This checks the kernels' logic on every CI run (no GPU
there); tests/ops/test_cuda_presto.py runs the same cases on a real device (exp/log are
glibc's here, CUDA's there)."""

from __future__ import annotations

import itertools

import pytest
import torch
from emu_kernels import EmuKernels
from tests.ops.presto_cases import (
    EXTEND_CASES,
    empty_tables,
    feed_chunks,
    presto_case,
    repetitive_stream,
    select_on,
    table_rows,
)
from tests.ops.tree_checks import assert_trees_identical

from difftree_rt import ops
from difftree_rt.policies import presto_table_size


@pytest.fixture(scope="module")
def emu(emu_lib) -> EmuKernels:  # type: ignore[no-untyped-def]
    return EmuKernels(emu_lib)


def _check(emu: EmuKernels, case: dict, tag: object) -> None:
    cpu = select_on(case, "cpu")
    args = dict(case)
    tok, lp, budget = args.pop("cand_token"), args.pop("cand_logprob"), args.pop("budget")
    ctx, keys, counts = args.pop("context"), args.pop("keys"), args.pop("counts")
    assert_trees_identical(cpu, emu.presto_select(tok, lp, budget, ctx, keys, counts, **args), tag)


# A slice of the CUDA test matrix (budgets up to 64: the emulator switches fibers per barrier).
MATRIX = [
    (B, budget, L, order, lam)
    for B, budget, L, order, lam in itertools.product(
        [1, 3], [1, 7, 16, 33, 64], [1, 4, 15], [1, 2, 3], [0.0, 0.2, 1.0]
    )
    if (B + budget + L + order + int(10 * lam)) % 3 == 0
]


@pytest.mark.parametrize("schedule", [0, 1, 2])
def test_presto_select_matches_cpu(emu: EmuKernels, schedule: int) -> None:
    emu.config(threads=0, schedule=schedule)
    for B, budget, L, order, lam in MATRIX:
        seed = B * 7919 + budget * 131 + L * 17 + order * 3 + int(lam * 10) + schedule
        case = presto_case(seed, B, L, budget, order, lam, shared=seed % 2 == 0,
                           root=seed % 3 != 0, idx64=seed % 4 < 2)  # fmt: skip
        _check(emu, case, (B, budget, L, order, lam, schedule))


@pytest.mark.parametrize("threads", [32, 64, 96])
def test_presto_select_at_other_block_sizes(emu: EmuKernels, threads: int) -> None:
    # Loops over K, N and the depths must not assume the kernel's 256 threads.
    emu.config(threads=threads, schedule=2)
    try:
        for seed in range(12):
            B, L, budget = 1 + seed % 3, [1, 5, 15][seed % 3], [3, 20, 50, 90][seed % 4]
            order, lam = 1 + seed % 5, [0.2, 1.0, 0.0][seed % 3]
            case = presto_case(900 + seed, B, L, budget, order, lam, shared=seed % 2 == 1,
                               root=True, V=[9, 40, 120][seed % 3])  # fmt: skip
            _check(emu, case, (threads, seed))
    finally:
        emu.config(0, 0)


def test_presto_select_fuzz(emu: EmuKernels) -> None:
    emu.config(threads=0, schedule=2)
    for seed in range(24):
        gen = torch.Generator().manual_seed(5000 + seed)
        B, L = 1 + seed % 4, [1, 2, 5, 9, 20][seed % 5]
        budget = 1 + int(torch.randint(0, 120, (), generator=gen))
        V = [2, 9, 30, 120][(seed // 3) % 4]
        case = presto_case(
            seed, B, L, budget, 1 + seed % 8, [0.0, 0.05, 0.2, 0.7, 1.0, 3.0][(seed // 2) % 6],
            shared=seed % 3 == 0, root=seed % 2 == 0, idx64=seed % 5 < 2,
            T=[0, 1, 5, 80, 400][seed % 5], V=V, K=1 + int(torch.randint(0, V, (), generator=gen)),
            alpha=[0.3, 1.0, 2.5][seed % 3],
        )  # fmt: skip
        _check(emu, case, ("fuzz", seed))
    emu.config(0, 0)


def test_presto_select_workspace_path(emu: EmuKernels) -> None:
    # Too big for shared memory: the scratch lives in the caller's workspace.
    C = __import__("difftree_rt._C", fromlist=["_C"])
    assert C.presto_select_workspace_bytes(2, 15, 64, 1024, 3) > 0
    case = presto_case(77, 2, 15, 1024, 3, 0.3, shared=False, root=True, K=64, V=64)
    _check(emu, case, "workspace")


@pytest.mark.parametrize(("B", "order", "T", "width"), EXTEND_CASES)
def test_ngram_extend_matches_cpu(emu: EmuKernels, B: int, order: int, T: int, width: int) -> None:
    emu.config(threads=0, schedule=2)
    gen = torch.Generator().manual_seed(B * 1000 + order * 100 + T + width)
    streams = [repetitive_stream(gen, 5 + 3 * B, max(0, T - 7 * b)) for b in range(B)]
    H = presto_table_size(order, T)
    kc, cc, hc = empty_tables(B, H, order)
    ke, ce, he = empty_tables(B, H, order)
    overflow = torch.zeros(B, dtype=torch.int32)
    for tokens, num in feed_chunks(gen, streams, width, False, B % 2 == 0):
        ops.ngram_extend(kc, cc, hc, tokens, num, order)
        emu.ngram_extend(ke, ce, he, tokens, num, order, overflow)
        assert torch.equal(he, hc)
        assert table_rows(ke, ce) == table_rows(kc, cc)
    assert not bool(overflow.any())
    emu.config(0, 0)


def test_ngram_extend_overflow_flag(emu: EmuKernels) -> None:
    B, H, order = 3, 8, 3
    tokens = torch.arange(60).reshape(B, 20)
    num = torch.tensor([20, 0, 2])
    keys, counts, hist = empty_tables(B, H, order)
    overflow = torch.zeros(B, dtype=torch.int32)
    emu.ngram_extend(keys, counts, hist, tokens, num, order, overflow)
    assert overflow.tolist() == [1, 0, 0]  # only the request whose table filled up
    assert bool((keys[0] != 0).all()) and not bool(keys[1].any())
    assert hist.tolist() == [[18, 19], [-1, -1], [40, 41]]


def test_tables_built_by_the_kernel_drive_the_selector(emu: EmuKernels) -> None:
    # The engine's loop: extend with each round's tokens, select from the tables — kernel
    # tables (other slot positions) and kernel selection against the CPU pipeline.
    from tests.conftest import random_logits

    emu.config(threads=0, schedule=2)
    B, L, order, V, K, budget = 3, 6, 4, 24, 12, 48
    gen = torch.Generator().manual_seed(99)
    streams = [repetitive_stream(gen, V, 300) for _ in range(B)]
    H = presto_table_size(order, 300)
    kc, cc, hc = empty_tables(B, H, order)
    ke, ce, he = empty_tables(B, H, order)
    rounds = 0
    for tokens, num in feed_chunks(gen, streams, 24, False, False):
        ops.ngram_extend(kc, cc, hc, tokens, num, order)
        emu.ngram_extend(ke, ce, he, tokens, num, order)
        tok, lp = ops.topk_logprobs(random_logits(gen, B, L, V, ties=rounds % 4 == 0), K)
        root = hc[:, -1].clamp(min=0)
        cpu = ops.presto_select_from_candidates(
            tok, lp, budget, hc, kc, cc, order=order, vocab=V, lam=1.0, root_token=root
        )
        got = emu.presto_select(tok, lp, budget, he, ke, ce, order=order, vocab=V, lam=1.0,
                                root_token=root)  # fmt: skip
        assert_trees_identical(cpu, got, ("drive", rounds))
        rounds += 1
    assert rounds >= 5
    emu.config(0, 0)
