"""CUDA ngram_extend / presto_select against the CPU ops: the tables after chunked extends (the
count of every key, slot positions aside, and the history rows), the overflow flag, and
presto_select's eight tree arrays bit for bit over seeded cases (orders 1-8, λ = 0 / 0.2 / 1,
shared [H] and per-request [B, H] tables, with and without a root token, int32/int64 indices, the
shared-memory and workspace paths), CUDA-graph capture and replay with new inputs in the same
buffers, and tables built on the GPU driving the GPU selector (GPU only).

The device op's double exp/log are CUDA's (<= 1-2 ulp from glibc's), so an fp32 edge score can
in principle round differently when its double value sits within a few ulp of an fp32 rounding
boundary; the seeded cases here are expected to be exact (cuda/presto.cu)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import random_logits
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

from difftree_rt import build_info, ops
from difftree_rt.policies import presto_table_size

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"]:
        pytest.skip("difftree_rt was built without CUDA kernels")


# ---- streams and tables --------------------------------------------------------------------------


# ---- ngram_extend --------------------------------------------------------------------------------


@pytest.mark.parametrize(("B", "order", "T", "width"), EXTEND_CASES)
@pytest.mark.parametrize("idx64", [False, True])
@pytest.mark.parametrize("prefilled", [False, True])
def test_ngram_extend_cuda_matches_cpu(B, order, T, width, idx64, prefilled) -> None:
    gen = torch.Generator().manual_seed(B * 1000 + order * 100 + T + width + idx64 + 2 * prefilled)
    V = 5 + 3 * B
    streams = [repetitive_stream(gen, V, max(0, T - 7 * b)) for b in range(B)]
    H = presto_table_size(order, T)
    kc, cc, hc = empty_tables(B, H, order)
    if prefilled and order > 1:  # a prompt whose n-grams are not in the table, -1s on the left
        for b in range(B):
            n = int(torch.randint(0, order, (), generator=gen))
            hc[b, order - 1 - n :] = torch.randint(0, V, (n,), generator=gen)
    kg, cg, hg = kc.cuda(), cc.cuda(), hc.cuda()
    overflow = torch.zeros(B, dtype=torch.int32, device="cuda")
    calls = 0
    for tokens, num in feed_chunks(gen, streams, width, False, idx64):
        ops.ngram_extend(kc, cc, hc, tokens, num, order)
        ops.ngram_extend(kg, cg, hg, tokens.cuda(), num.cuda(), order, overflow=overflow)
        assert torch.equal(hg.cpu(), hc)
        assert table_rows(kg, cg) == table_rows(kc, cc)
        calls += 1
    assert calls > 0
    assert not bool(overflow.any())
    # Every token added its n-grams: twice (t and ⊥) per available order.
    assert int(cg.sum()) == int(cc.sum()) > 0


def test_ngram_extend_cuda_overflow_flag() -> None:
    B, H, order = 3, 8, 3
    tokens = torch.arange(60).reshape(B, 20)
    num = torch.tensor([20, 0, 2])
    keys, counts, hist = empty_tables(B, H, order, "cuda")
    overflow = torch.zeros(B, dtype=torch.int32, device="cuda")
    ops.ngram_extend(keys, counts, hist, tokens.cuda(), num.cuda(), order, overflow=overflow)
    assert overflow.tolist() == [1, 0, 0]  # only the request whose table filled up
    assert bool((keys[0] != 0).all()) and bool((counts[0] > 0).all())
    assert not bool(keys[1].any())
    assert hist.tolist() == [[18, 19], [-1, -1], [40, 41]]  # still updated
    # Request 2 is exactly the CPU's.
    kc, cc, hc = empty_tables(1, H, order)
    ops.ngram_extend(kc, cc, hc, tokens[2:], num[2:], order)
    assert table_rows(keys[2:], counts[2:]) == table_rows(kc, cc)
    # The flag is sticky: an extend that fits leaves it set.
    ops.ngram_extend(
        keys, counts, hist, tokens.cuda(), torch.zeros(B).long().cuda(), order, overflow
    )
    assert overflow.tolist() == [1, 0, 0]
    # Without a flag the kernel still drops silently; the CPU op raises.
    ops.ngram_extend(keys, counts, hist, tokens.cuda(), num.cuda(), order)
    kc, cc, hc = empty_tables(B, H, order)
    with pytest.raises(ValueError, match="full"):
        ops.ngram_extend(kc, cc, hc, tokens, num, order)


def test_ngram_extend_cuda_graph_replay() -> None:
    B, order, width = 3, 3, 8
    gen = torch.Generator().manual_seed(7)
    streams = [repetitive_stream(gen, 12, 120) for _ in range(B)]
    H = presto_table_size(order, 120)
    kc, cc, hc = empty_tables(B, H, order)
    kg, cg, hg = empty_tables(B, H, order, "cuda")
    tok_d = torch.zeros((B, width), dtype=torch.int64, device="cuda")
    num_d = torch.zeros(B, dtype=torch.int64, device="cuda")
    overflow = torch.zeros(B, dtype=torch.int32, device="cuda")
    ops.ngram_extend(kg, cg, hg, tok_d, num_d, order, overflow=overflow)  # warm-up: no tokens
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.ngram_extend(kg, cg, hg, tok_d, num_d, order, overflow=overflow)
    for tokens, num in feed_chunks(gen, streams, width, True, True):
        tok_d.copy_(tokens)
        num_d.copy_(num)
        graph.replay()
        ops.ngram_extend(kc, cc, hc, tokens, num, order)
        assert torch.equal(hg.cpu(), hc)
        assert table_rows(kg, cg) == table_rows(kc, cc)
    assert not bool(overflow.any())


# ---- presto_select -------------------------------------------------------------------------------


def _check(case: dict) -> None:
    cpu = select_on(case, "cpu")
    gpu = select_on(case, "cuda")
    assert gpu.token.is_cuda
    assert_trees_identical(cpu, gpu)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("budget", [1, 7, 16, 33, 64, 200])
@pytest.mark.parametrize("L", [1, 4, 15])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_presto_select_cuda_matches_cpu(B, budget, L, order, lam) -> None:
    seed = B * 7919 + budget * 131 + L * 17 + order * 3 + int(lam * 10)
    case = presto_case(
        seed, B, L, budget, order, lam, shared=seed % 2 == 0, root=seed % 3 != 0, idx64=seed % 4 < 2
    )
    _check(case)


@pytest.mark.parametrize("seed", range(60))
def test_presto_select_cuda_fuzz(seed: int) -> None:
    gen = torch.Generator().manual_seed(5000 + seed)
    B = 1 + seed % 4
    L = [1, 2, 5, 9, 20, 33][seed % 6]
    budget = 1 + int(torch.randint(0, 500, (), generator=gen))
    order = 1 + seed % 8
    lam = [0.0, 0.05, 0.2, 0.7, 1.0, 3.0][(seed // 2) % 6]
    V = [2, 9, 30, 120][(seed // 3) % 4]
    K = 1 + int(torch.randint(0, V, (), generator=gen))
    T = [0, 1, 5, 80, 400][seed % 5]
    case = presto_case(
        seed, B, L, budget, order, lam, shared=seed % 3 == 0, root=seed % 2 == 0,
        idx64=seed % 5 < 2, T=T, V=V, K=K, alpha=[0.3, 1.0, 2.5][seed % 3],
    )  # fmt: skip
    _check(case)


def test_presto_select_cuda_small_and_degenerate() -> None:
    # L = 0 (the root only), K = 1 chains, a lattice smaller than the budget, budget 1.
    gen = torch.Generator().manual_seed(3)
    for B, L, K, budget in [
        (2, 0, 0, 5),
        (2, 0, 3, 1),
        (1, 6, 1, 20),
        (3, 2, 2, 100),
        (2, 3, 5, 1),
    ]:
        for lam in (0.0, 0.5):
            tok = torch.zeros((B, L, K), dtype=torch.int32)
            for d in range(L):  # distinct tokens per depth
                tok[:, d] = torch.randperm(9, generator=gen)[:K].int()
            lp = torch.randn((B, L, K), generator=gen).log_softmax(-1)
            lp = lp.sort(-1, descending=True).values
            keys, counts, hist = empty_tables(B, 256, 3)
            stream = torch.randint(0, 9, (B, 30), generator=gen)
            ops.ngram_extend(keys, counts, hist, stream, torch.full((B,), 30), 3)
            root = stream[:, -1].contiguous()
            case = dict(
                cand_token=tok, cand_logprob=lp, budget=budget, context=hist, keys=keys,
                counts=counts, order=3, vocab=9, lam=lam, alpha=1.0, root_token=root,
            )  # fmt: skip
            _check(case)


@pytest.mark.parametrize(("L", "K", "budget"), [(15, 64, 1024), (15, 200, 2048), (40, 9, 4096)])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_presto_select_cuda_workspace_path(L, K, budget, lam) -> None:
    order = 4
    C = __import__("difftree_rt._C", fromlist=["_C"])
    assert C.presto_select_workspace_bytes(2, L, K, budget, order) > 0  # not shared memory
    case = presto_case(
        L + K + budget, 2, L, budget, order, lam, shared=False, root=True, T=300, V=max(K, 50), K=K
    )
    _check(case)


def test_presto_select_workspace_query() -> None:
    C = __import__("difftree_rt._C", fromlist=["_C"])
    assert C.presto_select_workspace_bytes(1, 15, 16, 64, 3) == 0  # fits in shared memory
    assert C.presto_select_workspace_bytes(3, 15, 64, 4096, 4) > 0
    one = C.presto_select_workspace_bytes(1, 15, 256, 2048, 3)
    assert C.presto_select_workspace_bytes(4, 15, 256, 2048, 3) == 4 * one


@pytest.mark.parametrize("budget", [64, 2048])  # shared-memory and workspace paths
@pytest.mark.parametrize("per_request", [False, True])
def test_presto_select_cuda_graph_replay(budget: int, per_request: bool) -> None:
    B, L, order, lam, V, K, H = 2, 8, 3, 0.4, 40, 32, 1 << 13

    def case(seed: int, T: int) -> dict:
        return presto_case(seed, B, L, budget, order, lam, shared=not per_request, root=True,
                            idx64=True, T=T, V=V, K=K, H=H)  # fmt: skip

    base = case(budget, 200)
    bufs = {k: v.cuda() for k, v in base.items() if isinstance(v, torch.Tensor)}
    case_d = {**base, **bufs}
    select_on(case_d, "cuda")  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tree = select_on(case_d, "cuda")
    for seed, T in ((31, 0), (32, 60), (33, 200)):
        new = case(seed, T)
        for k, buf in bufs.items():
            assert new[k].shape == buf.shape and new[k].dtype == buf.dtype, k
            buf.copy_(new[k])
        graph.replay()
        assert_trees_identical(select_on(new, "cpu"), tree)


def test_presto_cuda_tables_drive_the_cuda_selector() -> None:
    """The engine's loop: each round extends every request's table with its accepted tokens on
    the device and selects from it; the GPU tables (own slot layout) give the CPU's trees."""
    B, L, order, V, K, budget = 3, 6, 4, 24, 12, 48
    gen = torch.Generator().manual_seed(99)
    streams = [repetitive_stream(gen, V, 400) for _ in range(B)]
    H = presto_table_size(order, 400)
    kc, cc, hc = empty_tables(B, H, order)
    kg, cg, hg = empty_tables(B, H, order, "cuda")
    overflow = torch.zeros(B, dtype=torch.int32, device="cuda")
    rounds = 0
    for tokens, num in feed_chunks(gen, streams, 24, False, False):
        ops.ngram_extend(kc, cc, hc, tokens, num, order)
        ops.ngram_extend(kg, cg, hg, tokens.cuda(), num.cuda(), order, overflow=overflow)
        x = random_logits(gen, B, L, V, ties=rounds % 4 == 0)
        tok, lp = ops.topk_logprobs(x, K)
        root = hc[:, -1].clamp(min=0)
        for lam in (0.2, 1.0):
            cpu = ops.presto_select_from_candidates(
                tok, lp, budget, hc, kc, cc, order=order, vocab=V, lam=lam, root_token=root
            )
            gpu = ops.presto_select_from_candidates(
                tok.cuda(), lp.cuda(), budget, hg, kg, cg,
                order=order, vocab=V, lam=lam, root_token=root.cuda(),
            )  # fmt: skip
            assert_trees_identical(cpu, gpu)
        rounds += 1
    assert rounds > 5 and not bool(overflow.any())
