"""CUDA caddtree_select / taps_select against the CPU ops, bit for bit, over many seeded inputs
(odd sizes, ties, budget 1, N not a multiple of 32, the workspace paths), CUDA-graph capture and
replay with new device-side inputs, and the engine policies on CUDA logits (GPU only)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import random_logits
from tests.ops.kernel_cases import cost_rows, taps_case
from tests.ops.tree_checks import assert_trees_identical

from difftree_rt import build_info, ops

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"]:
        pytest.skip("difftree_rt was built without CUDA kernels")


def _cuda(t):
    return None if t is None else t.cuda()


# ---- caddtree_select ---------------------------------------------------------------------------


CAD_CASES = [
    # (B, L, V, budget)
    (1, 0, 5, 1),
    (1, 1, 1, 1),
    (2, 3, 2, 1),
    (1, 15, 33, 16),
    (3, 15, 151, 63),
    (2, 7, 3, 100),  # the lattice holds fewer nodes than the budget
    (1, 15, 1000, 255),
    (2, 15, 2000, 1023),
    (1, 15, 5000, 4096),  # the ddtree workspace path
    (2, 40, 9, 300),
]


@pytest.mark.parametrize(("B", "L", "V", "budget"), CAD_CASES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("kind", ["convex", "flat", "steep"])
def test_caddtree_select_cuda_matches_cpu(B, L, V, budget, ties, kind) -> None:
    gen = torch.Generator().manual_seed(B * 131 + L * 17 + V + budget + ties)
    x = random_logits(gen, B, L, V, ties=ties)
    tok, lp = ops.topk_logprobs(x, max(1, min(budget, V)))
    root = torch.randint(0, V, (B,), generator=gen)
    verify, draft = cost_rows(gen, B, budget, kind)
    cpu = ops.caddtree_select_from_candidates(tok, lp, budget, verify, draft, root)
    gpu = ops.caddtree_select_from_candidates(
        tok.cuda(), lp.cuda(), budget, verify.cuda(), draft.cuda(), root.cuda()
    )
    assert_trees_identical(cpu, gpu)


@pytest.mark.parametrize("seed", range(60))
def test_caddtree_select_cuda_fuzz(seed: int) -> None:
    gen = torch.Generator().manual_seed(2000 + seed)
    B, L, V = 1 + seed % 3, 1 + seed % 16, 2 + (seed * 37) % 300
    budget = 1 + (seed * 53) % 700
    x = random_logits(gen, B, L, V, ties=seed % 2 == 0, neg_inf=seed % 3 == 0)
    k = max(1, min(budget, V, 1 + seed * 7 % 50)) if seed % 4 == 0 else max(1, min(budget, V))
    tok, lp = ops.topk_logprobs(x, k)
    verify, draft = cost_rows(gen, B, budget)
    if seed % 5 == 0:  # costs that make θ non-unimodal: the first non-improvement still rules
        verify = verify + torch.rand(verify.shape, generator=gen) * 0.5
    root = None if seed % 2 else torch.randint(0, V, (B,), generator=gen)
    cpu = ops.caddtree_select_from_candidates(tok, lp, budget, verify, draft, root)
    gpu = ops.caddtree_select_from_candidates(
        tok.cuda(), lp.cuda(), budget, verify.cuda(), draft.cuda(), _cuda(root)
    )
    assert_trees_identical(cpu, gpu)


@pytest.mark.parametrize("budget", [64, 2048])  # shared-memory and workspace paths
def test_caddtree_select_cuda_graph_replay(budget: int) -> None:
    B, L, V = 2, 15, 3000
    gen = torch.Generator().manual_seed(budget)
    tok, lp = ops.topk_logprobs(random_logits(gen, B, L, V), budget)
    verify, draft = cost_rows(gen, B, budget)
    tok_d, lp_d, ver_d, dr_d = tok.cuda(), lp.cuda(), verify.cuda(), draft.cuda()
    root = torch.tensor([1, 2], device="cuda")
    ops.caddtree_select_from_candidates(tok_d, lp_d, budget, ver_d, dr_d, root)  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tree = ops.caddtree_select_from_candidates(tok_d, lp_d, budget, ver_d, dr_d, root)
    sizes = set()
    for seed in (11, 12, 13):
        g2 = torch.Generator().manual_seed(seed)
        new_tok, new_lp = ops.topk_logprobs(random_logits(g2, B, L, V), budget)
        new_ver, new_dr = cost_rows(g2, B, budget)
        for dst, src in ((tok_d, new_tok), (lp_d, new_lp), (ver_d, new_ver), (dr_d, new_dr)):
            dst.copy_(src)
        root.copy_(torch.tensor([seed, seed + 1]))
        graph.replay()
        ref = ops.caddtree_select_from_candidates(
            new_tok, new_lp, budget, new_ver, new_dr, root.cpu()
        )
        assert_trees_identical(ref, tree)
        sizes.add(tuple(ref.num_nodes.tolist()))
    assert len(sizes) > 1  # the replays really chose different cuts


# ---- taps_select -------------------------------------------------------------------------------


TAPS_CASES = [
    # (B, L, V, width, pool_size, budget)
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 3, 6, 1),
    (3, 7, 40, 8, 30, 5),
    (1, 15, 300, 40, 90, 20),
    (2, 15, 300, 64, 128, 64),
    (1, 15, 1000, 100, 200, 33),  # N = 34: not a multiple of 32
    (2, 15, 2000, 256, 512, 256),
    (1, 15, 5000, 1024, 2048, 1024),
    (1, 15, 5000, 2048, 4096, 4096),  # the workspace path
    (2, 40, 9, 9, 300, 100),
]


@pytest.mark.parametrize(("B", "L", "V", "width", "pool_size", "budget"), TAPS_CASES)
@pytest.mark.parametrize("kind", ["rand", "ties", "zero"])
@pytest.mark.parametrize("idx32", [False, True])
def test_taps_select_cuda_matches_cpu(B, L, V, width, pool_size, budget, kind, idx32) -> None:
    pool, log_qc, _ = taps_case(B * 7 + L + V + width, B, L, V, width, pool_size, kind)
    cast = (lambda t: t.int()) if idx32 else (lambda t: t)
    args = (cast(pool.token), cast(pool.parent), cast(pool.size), log_qc)
    cpu = ops.taps_select(*args, budget, max_depth=L)
    gpu = ops.taps_select(*(a.cuda() for a in args), budget, max_depth=L)
    assert_trees_identical(cpu, gpu)


@pytest.mark.parametrize("seed", range(60))
def test_taps_select_cuda_fuzz(seed: int) -> None:
    V = [5, 40, 300][seed % 3]
    B, L = 1 + seed % 3, 1 + seed % 7
    width, pool_size = [1, 3, 8, 40][seed % 4], [1, 6, 30, 90][(seed // 4) % 4]
    budget = [1, 5, 20, 100][(seed // 2) % 4]
    pool, log_qc, gen = taps_case(seed, B, L, V, width, pool_size, ["rand", "ties"][seed % 2])
    size = pool.size
    if seed % 3 == 0:  # fewer valid rows than the pool holds: later rows are ignored
        size = torch.clamp(size - torch.randint(0, 4, size.shape, generator=gen), min=1)
        log_qc = log_qc.clone()
        log_qc[:, -1] = 0.0  # must not matter
    args = (pool.token, pool.parent, size, log_qc)
    cpu = ops.taps_select(*args, budget, max_depth=L)
    gpu = ops.taps_select(*(a.cuda() for a in args), budget, max_depth=L)
    assert_trees_identical(cpu, gpu)


def test_taps_select_cuda_deep_chain_pool() -> None:
    """A pool that is one long chain (depth = row index) and a star (every row a root child)."""
    P1 = 3000
    for parent in (torch.arange(-1, P1 - 1), torch.zeros(P1, dtype=torch.int64)):
        parent = parent.clone()
        parent[0] = -1
        token = torch.arange(P1) + 7
        log_qc = -(torch.arange(P1) % 5).float() * 0.25
        args = (token[None], parent[None], torch.tensor([P1]), log_qc[None])
        for budget in (1, 100, 2999, 4096):
            cpu = ops.taps_select(*args, budget, max_depth=P1)
            gpu = ops.taps_select(*(a.cuda() for a in args), budget, max_depth=P1)
            assert_trees_identical(cpu, gpu)


@pytest.mark.parametrize(("pool_size", "budget"), [(128, 64), (4096, 2048)])
def test_taps_select_cuda_graph_replay(pool_size: int, budget: int) -> None:
    B, L, V, width = 2, 15, 3000, budget
    pool, log_qc, _ = taps_case(budget, B, L, V, width, pool_size, "rand")
    bufs = [t.cuda() for t in (pool.token, pool.parent, pool.size, log_qc)]
    ops.taps_select(*bufs, budget, max_depth=L)  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tree = ops.taps_select(*bufs, budget, max_depth=L)
    for seed in (21, 22):
        p2, lq2, _ = taps_case(seed, B, L, V, width, pool_size, ["rand", "ties"][seed % 2])
        size2 = torch.clamp(p2.size - seed % 3, min=1)
        new = (p2.token, p2.parent, size2, lq2)
        for dst, src in zip(bufs, new):
            dst.copy_(src)
        graph.replay()
        assert_trees_identical(ops.taps_select(*new, budget, max_depth=L), tree)


def test_taps_select_workspace_query() -> None:
    C = __import__("difftree_rt._C", fromlist=["_C"])
    assert C.taps_select_workspace_bytes(1, 129, 64) == 0  # fits in shared memory
    assert C.taps_select_workspace_bytes(3, 4097, 4096) > 0


# ---- the engine policies on CUDA logits ----------------------------------------------------------


def _policy_input(seed: int, L: int, V: int, ctx: int = 40):
    from difftree_rt.policies import PolicyInput

    gen = torch.Generator().manual_seed(seed)
    logits = random_logits(gen, 1, L, V)
    root = torch.randint(0, V, (1,), generator=gen)
    context = torch.randint(0, V, (1, ctx), generator=gen)
    context[0, -1] = root[0]

    def make(device: str) -> PolicyInput:
        return PolicyInput(
            draft_logits=logits.to(device),
            root_token=root.to(device),
            context_ids=context.to(device),
        )

    return make


@pytest.mark.parametrize("seed", range(6))
def test_policies_on_cuda_logits_match_cpu(seed: int) -> None:
    from difftree_rt.policies import CaDDTreePolicy, TapsPolicy

    make = _policy_input(seed, 15, [50, 3000][seed % 2])
    for policy_fn in (
        lambda: CaDDTreePolicy(budget=[16, 256][seed % 2], truncate=seed % 3 == 0),
        lambda: TapsPolicy(budget=[16, 64][seed % 2], scorer="marginal"),
    ):
        cpu = policy_fn().select(make("cpu"))
        gpu = policy_fn().select(make("cuda"))
        assert gpu.token.is_cuda
        assert_trees_identical(cpu, gpu)
    # The fallback q_cond is computed on each device (f64 exp/log): tests/ops/test_cuda_d2sd.py
    # compares it to f64 noise.
