"""CUDA d2sd_boundaries / d2sd_select against the CPU ops, bit for bit, over many seeded inputs
(odd sizes, ties, budget 1, K = 0, -1 rows, L1 != L2, int32/int64, the workspace path),
CUDA-graph capture and replay with new device-side inputs; the device-form TAPS pool and q_cond
on CUDA against the CPU; the d2sd and taps policies on CUDA logits against the CPU, with no host
sync (GPU only)."""

from __future__ import annotations

import math

import pytest
import torch
from tests.conftest import random_logits
from tests.ops.kernel_cases import d2sd_select_case, d2sd_trunk_logprob
from tests.ops.test_cuda_policies import _cuda
from tests.ops.tree_checks import assert_trees_identical

from difftree_rt import build_info, ops
from difftree_rt.policies.taps import fallback_log_qc, marginal_log_qc, taps_pool

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"]:
        pytest.skip("difftree_rt was built without CUDA kernels")


# ---- d2sd_boundaries ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(80))
def test_d2sd_boundaries_cuda_matches_cpu(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, L = 1 + seed % 5, [1, 2, 3, 7, 15, 31, 33, 100, 1000][seed % 9]
    k = [1, L, max(1, L // 2), min(L, 4)][seed % 4]
    lp = d2sd_trunk_logprob(gen, B, L, ["rand", "ties", "peaked", "flat"][seed % 4])
    cpu = ops.d2sd_boundaries(lp, k)
    gpu = ops.d2sd_boundaries(lp.cuda(), k)
    assert gpu.is_cuda and gpu.dtype == torch.int32
    assert torch.equal(cpu, gpu.cpu())


def test_d2sd_boundaries_cuda_hand_checked_and_limits() -> None:
    lp = torch.tensor([[math.log(0.9), math.log(0.5), math.log(0.1)]], dtype=torch.float32)
    assert ops.d2sd_boundaries(lp.cuda(), 3).tolist() == [[1, 2, 0]]
    lp = torch.tensor([[0.0, 0.0, 0.0, -1.0]], device="cuda")
    assert ops.d2sd_boundaries(lp, 4).tolist() == [[3, 0, 1, 2]]
    big = -torch.rand(2, 4096, device="cuda")
    assert torch.equal(ops.d2sd_boundaries(big, 7).cpu(), ops.d2sd_boundaries(big.cpu(), 7))
    with pytest.raises(ValueError, match="L <= 4096"):
        ops.d2sd_boundaries(-torch.rand(1, 4097, device="cuda"), 1)
    # Malformed data is not validated on the device, but the output stays a permutation prefix.
    bad = torch.tensor([[float("nan"), 0.5, -1.0, float("-inf"), -0.2]], device="cuda")
    out = ops.d2sd_boundaries(bad, 5).cpu()[0].tolist()
    assert sorted(out) == [0, 1, 2, 3, 4]


# ---- d2sd_select -------------------------------------------------------------------------------


SELECT_CASES = [
    # (B, L1, L2, K, V, budget)
    (1, 1, 1, 0, 5, 1),  # K = 0: the first-draft chain
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 2, 2, 1),  # budget 1
    (3, 15, 15, 4, 3, 16),  # V = 3: branches merge into the trunk and each other
    (2, 15, 15, 4, 50, 64),
    (1, 7, 15, 4, 9, 33),  # L1 != L2, N = 34 not a multiple of 32
    (2, 15, 7, 6, 9, 200),  # budget > trie rows
    (1, 31, 17, 15, 4, 100),
    (3, 40, 63, 40, 7, 1000),  # 2561 trie rows: the workspace path
    (1, 100, 300, 200, 5, 4096),  # 60101 rows: the workspace path
]


@pytest.mark.parametrize(("B", "L1", "L2", "K", "V", "budget"), SELECT_CASES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("idx32", [False, True])
def test_d2sd_select_cuda_matches_cpu(B, L1, L2, K, V, budget, ties, idx32) -> None:
    args = d2sd_select_case(B * 7 + L1 + L2 + K + V + budget, B, L1, L2, K, V, ties)
    if idx32:
        args = tuple(t if t.is_floating_point() else t.int() for t in args)
    cpu = ops.d2sd_select(*args[:5], budget, args[5])
    gpu = ops.d2sd_select(*(a.cuda() for a in args[:5]), budget, args[5].cuda())
    assert gpu.max_depth == cpu.max_depth
    assert_trees_identical(cpu, gpu)


@pytest.mark.parametrize("seed", range(80))
def test_d2sd_select_cuda_fuzz(seed: int) -> None:
    B, L1, L2 = 1 + seed % 3, 1 + seed % 9, 1 + (seed * 5) % 11
    K, V = seed % 6, [2, 3, 50][seed % 3]
    budget = [1, 3, 17, 200][(seed // 3) % 4]
    args = d2sd_select_case(500 + seed, B, L1, L2, K, V, seed % 4 == 0)
    root = None if seed % 5 == 0 else args[5]
    if seed % 7 == 0:  # every row unused
        args = (args[0], args[1], torch.full_like(args[2], -1), *args[3:])
    cpu = ops.d2sd_select(*args[:5], budget, root)
    gpu = ops.d2sd_select(*(a.cuda() for a in args[:5]), budget, _cuda(root))
    assert_trees_identical(cpu, gpu)


def test_d2sd_select_cuda_workspace_query_and_limits() -> None:
    C = __import__("difftree_rt._C", fromlist=["_C"])
    assert C.d2sd_select_workspace_bytes(1, 15, 4, 15, 64) == 0  # fits in shared memory
    assert C.d2sd_select_workspace_bytes(2, 100, 200, 300, 4096) > 0
    trunk, tlp, _, branch, blp, root = d2sd_select_case(1, 1, 4, 4, 2, 9, False)
    with pytest.raises(ValueError, match="65536 rows"):
        big = torch.zeros((1, 20, 4096), device="cuda")
        ops.d2sd_select(
            trunk.cuda(),
            tlp.cuda(),
            torch.zeros((1, 20), dtype=torch.int32, device="cuda"),
            big.long(),
            big,
            8,
        )
    # Malformed data is trusted but clamped: out-of-range boundaries drop their rows, NaN and
    # positive log-probs count as 0; the tree stays valid.
    bad_b = torch.tensor([[7, -5, 1]], dtype=torch.int32)
    good_b = torch.tensor([[-1, -1, 1]], dtype=torch.int32)
    branch3 = torch.cat([branch, branch[:, :1]], 1)
    blp3 = torch.cat([blp, blp[:, :1]], 1)
    bad_tlp, good_tlp = tlp.clone(), tlp.clone()
    bad_tlp[0, 1], good_tlp[0, 1] = float("nan"), 0.0
    bad_blp, good_blp = blp3.clone(), blp3.clone()
    bad_blp[0, 2, 2], good_blp[0, 2, 2] = 0.5, 0.0
    tree = ops.d2sd_select(
        trunk.cuda(), bad_tlp.cuda(), bad_b.cuda(), branch3.cuda(), bad_blp.cuda(), 8, root.cuda()
    )
    want = ops.d2sd_select(trunk, good_tlp, good_b, branch3, good_blp, 8, root)
    assert_trees_identical(want, tree)


# K <= L1: the boundaries op returns min(K, m) columns and the branch rows must match them.
@pytest.mark.parametrize(("K", "L2", "budget"), [(4, 15, 64), (100, 300, 4096)])
def test_d2sd_cuda_graph_replay(K: int, L2: int, budget: int) -> None:
    """Both ops captured once, replayed on new device-side inputs (shared-memory and workspace
    paths): the boundaries feed the select inside the graph, as in a round."""
    B, L1, V = 2, 15 if K == 4 else 100, 7
    bufs = [a.cuda() for a in d2sd_select_case(budget, B, L1, L2, K, V, False)]
    trunk_token, trunk_logprob, _, branch_token, branch_logprob, root = bufs
    m = min(L1, L2)

    def round_fn():
        boundary = ops.d2sd_boundaries(trunk_logprob[:, :m].contiguous(), min(K, m))
        tree = ops.d2sd_select(
            trunk_token, trunk_logprob, boundary, branch_token, branch_logprob, budget, root
        )
        return boundary, tree

    round_fn()  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        boundary, tree = round_fn()
    for seed in (31, 32, 33):
        new = d2sd_select_case(seed, B, L1, L2, K, V, seed % 2 == 0)
        for dst, src in zip(bufs, new):
            if dst.shape == src.shape:
                dst.copy_(src)
        graph.replay()
        h = [t.cpu() for t in bufs]
        want_b = ops.d2sd_boundaries(h[1][:, :m].contiguous(), min(K, m))
        assert torch.equal(want_b, boundary.cpu())
        want = ops.d2sd_select(h[0], h[1], want_b, h[3], h[4], budget, h[5])
        assert_trees_identical(want, tree)


# ---- the device-form TAPS pool and q_cond on CUDA ------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_taps_pool_cuda_matches_cpu(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    B, L, V = 1 + seed % 3, [1, 7, 15][seed % 3], [5, 40, 300, 3000][seed % 4]
    width, P = [1, 3, 40, 256][seed % 4], [1, 30, 512, 2048][(seed // 4) % 4]
    x = random_logits(gen, B, L, V, ties=seed % 3 == 0, neg_inf=seed % 5 == 0)
    tok, lp = ops.topk_logprobs(x, max(1, min(width, V)))
    root = torch.randint(0, V, (B,), generator=gen)
    cpu = taps_pool(tok, lp, width, P, root)
    gpu = taps_pool(tok.cuda(), lp.cuda(), width, P, root.cuda())
    for name in ("token", "parent", "depth", "rank", "size"):
        assert torch.equal(getattr(cpu, name), getattr(gpu, name).cpu()), name
    assert torch.equal(cpu.score.view(torch.int32), gpu.score.cpu().view(torch.int32))
    c, g = marginal_log_qc(cpu, lp), marginal_log_qc(gpu, lp.cuda()).cpu()
    assert torch.equal(c.view(torch.int32), g.view(torch.int32))
    # The fallback's f64 exp/log and the tail's K-term sum are not bit-identical across
    # devices: agreement to f64 noise (docs/NOTES.md).
    c, g = fallback_log_qc(cpu, lp), fallback_log_qc(gpu, lp.cuda()).cpu()
    torch.testing.assert_close(g, c, rtol=1e-6, atol=1e-12)


# ---- the policies on CUDA logits -----------------------------------------------------------------


def _d2sd_round(policy, logits, root, branch_logits, device, *, check_sync: bool = False):
    from difftree_rt.engine.runner import forbid_host_sync
    from difftree_rt.policies import PolicyInput

    inputs = PolicyInput(draft_logits=logits.to(device), root_token=root.to(device))
    guard = forbid_host_sync if check_sync else __import__("contextlib").nullcontext
    with guard():
        blocks = policy.redraft_blocks(inputs, branch_logits.shape[2] + 1, 0)
    inputs.branch_logits = branch_logits[:, : blocks.shape[1]].to(device)
    with guard():
        tree = policy.select(inputs)
    return blocks, tree


@pytest.mark.parametrize("seed", range(8))
def test_d2sd_policy_on_cuda_matches_cpu_without_sync(seed: int) -> None:
    from difftree_rt.policies.d2sd import D2SDPolicy

    gen = torch.Generator().manual_seed(seed)
    L1, S2, V = 15, [16, 8][seed % 2], [50, 3000][seed // 2 % 2]
    logits = random_logits(gen, 1, L1, V)
    root = torch.randint(0, V, (1,), generator=gen)
    branch = random_logits(gen, 8, S2 - 1, V).reshape(1, 8, S2 - 1, V)
    policy = D2SDPolicy(budget=[16, 64][seed % 2], k=[1, 4, 8][seed % 3], alternative=seed < 6)
    b_cpu, t_cpu = _d2sd_round(policy, logits, root, branch, "cpu")
    b_gpu, t_gpu = _d2sd_round(policy, logits, root, branch, "cuda", check_sync=True)
    assert b_gpu.is_cuda and t_gpu.token.is_cuda
    assert torch.equal(b_cpu, b_gpu.cpu())
    assert_trees_identical(t_cpu, t_gpu)


@pytest.mark.parametrize("seed", range(6))
def test_taps_policy_on_cuda_reads_nothing_on_the_host(seed: int) -> None:
    from difftree_rt.engine.runner import forbid_host_sync
    from difftree_rt.policies import PolicyInput, TapsPolicy

    gen = torch.Generator().manual_seed(seed)
    logits = random_logits(gen, 1, 15, [50, 3000][seed % 2])
    root = torch.randint(0, logits.shape[-1], (1,), generator=gen)
    for scorer in (None, "marginal"):
        policy = TapsPolicy(budget=[16, 64, 256][seed % 3], scorer=scorer)
        cpu = policy.select(PolicyInput(draft_logits=logits, root_token=root))
        # The host->device copies happen before the guard: only the policy is under test.
        inputs = PolicyInput(draft_logits=logits.cuda(), root_token=root.cuda())
        torch.cuda.synchronize()
        with forbid_host_sync():
            gpu = policy.select(inputs)
        assert gpu.token.is_cuda
        if scorer == "marginal":
            assert_trees_identical(cpu, gpu)
        else:
            _assert_taps_fallback_tree_close(cpu, gpu)


def _assert_taps_fallback_tree_close(cpu, gpu) -> None:
    """The fallback q_cond agree across devices to f64 noise only: the same tree (a near-tie
    at 1e-15 would be needed to reorder it), reach equal to ~1e-6 relative."""
    for name, c, g in zip(ops._TREE_FIELDS, cpu.arrays(), gpu.arrays()):
        if name == "score":
            torch.testing.assert_close(g.cpu(), c, rtol=1e-6, atol=1e-12)
        else:
            assert torch.equal(c, g.cpu()), name
