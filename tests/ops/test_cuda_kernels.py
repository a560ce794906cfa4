"""CUDA topk_logprobs / ddtree_select / node_select against the CPU ops, exactly, over odd sizes,
plus CUDA-graph capture and replay with new device-side inputs (GPU only; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import random_logits
from tests.ops.kernel_cases import node_select_case

from difftree_rt import build_info, ops

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"]:
        pytest.skip("difftree_rt was built without CUDA kernels")


def _assert_tree_equal(cpu, gpu) -> None:
    for name, c, g in zip(ops._TREE_FIELDS, cpu.arrays(), gpu.arrays()):
        assert torch.equal(c, g.cpu()), name


# ---- topk_logprobs -----------------------------------------------------------------------------

TOPK_CASES = [
    # (B, L, V, k)
    (1, 1, 1, 1),
    (1, 3, 31, 1),
    (2, 5, 33, 7),
    (3, 1, 1000, 1000),
    (1, 15, 151936, 256),
    (2, 4, 151936, 1),
    (1, 2, 262144, 4096),
    (1, 7, 50257, 4096),
    (4, 3, 4099, 513),
    (1, 0, 17, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("B", "L", "V", "k"), TOPK_CASES)
@pytest.mark.parametrize("kind", ["plain", "ties", "neg_inf"])
def test_topk_cuda_matches_cpu(dtype, B, L, V, k, kind) -> None:
    gen = torch.Generator().manual_seed(B * 7919 + L * 31 + V + k)
    x = random_logits(gen, B, L, V, ties=kind == "ties", neg_inf=kind == "neg_inf").to(dtype)
    tok_c, lp_c = ops.topk_logprobs(x, k)
    tok_g, lp_g = ops.topk_logprobs(x.cuda(), k)
    assert torch.equal(tok_c, tok_g.cpu())
    # bit-exact, -0.0 included
    assert torch.equal(lp_c.view(torch.int32), lp_g.cpu().view(torch.int32))


def test_topk_cuda_flags_bad_rows() -> None:
    x = torch.randn(2, 3, 100)
    x[0, 1, 7] = float("nan")
    x[1, 2, :] = float("-inf")
    x[1, 0, 3] = float("inf")
    tok, lp, err = ops.topk_logprobs_flagged(x.cuda(), 5)
    assert err.cpu().tolist() == [[0, 1, 0], [1, 0, 2]]
    assert tok[0, 1].cpu().tolist() == [0, 1, 2, 3, 4]
    assert (lp[0, 1] == -1e4).all()
    good_tok, good_lp = ops.topk_logprobs(x[:1, :1], 5)
    assert torch.equal(tok[:1, :1].cpu(), good_tok)
    assert torch.equal(lp[:1, :1].cpu(), good_lp)


def test_topk_cuda_graph_replay() -> None:
    gen = torch.Generator().manual_seed(0)
    x = random_logits(gen, 2, 15, 4097).cuda()
    tok, lp = ops.topk_logprobs(x, 64)  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tok, lp = ops.topk_logprobs(x, 64)
    for seed in (1, 2):
        new = random_logits(torch.Generator().manual_seed(seed), 2, 15, 4097)
        x.copy_(new)
        graph.replay()
        ref_tok, ref_lp = ops.topk_logprobs(new, 64)
        assert torch.equal(tok.cpu(), ref_tok)
        assert torch.equal(lp.cpu(), ref_lp)


# ---- topk_logprobs, split-row path (num_splits > 1) -------------------------------------------

SPLIT_CASES = [
    # (B, L, V, k): odd V, K = 1 and K = V, chunks longer and shorter than K, empty chunks (V < C)
    (1, 1, 1, 1),
    (1, 3, 31, 1),
    (2, 2, 31, 31),
    (3, 2, 4099, 1),
    (2, 3, 4099, 513),
    (1, 2, 4096, 4096),
    (1, 15, 151936, 256),
    (2, 4, 151936, 1),
    (1, 2, 262144, 4096),
]


def _assert_split_close(tok_c, lp_c, tok_g, lp_g, x) -> None:
    """Tokens equal; log-probs bit-equal, or (documented in docs/NOTES.md) one f32 ulp of the
    log-sum-exp apart, when the f64 sum taken in another order rounds to a neighbouring f32 lse.
    At most one such row per call is expected (it needs the lse within ~1e-15 of a rounding
    boundary); more points at a real bug."""
    tok_g, lp_g = tok_g.cpu(), lp_g.cpu()
    assert torch.equal(tok_c, tok_g)
    same = (lp_c.view(torch.int32) == lp_g.view(torch.int32)).all(dim=-1)
    if bool(same.all()):
        return
    assert int((~same).sum()) <= 1, f"{int((~same).sum())} rows differ"
    logit = torch.gather(x.float(), -1, tok_c.long())
    lse = (logit - lp_c).abs()  # ~ |lse| (exact away from the clamp)
    eps = torch.finfo(torch.float32).eps
    bound = eps * (lse + lp_c.abs()) + 1e-30
    assert ((lp_c - lp_g).abs() <= bound).all()


@pytest.mark.parametrize("num_splits", [2, 8, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("B", "L", "V", "k"), SPLIT_CASES)
@pytest.mark.parametrize("kind", ["plain", "ties", "neg_inf"])
def test_topk_split_matches_cpu(num_splits, dtype, B, L, V, k, kind) -> None:
    gen = torch.Generator().manual_seed(B * 7919 + L * 31 + V + k + num_splits)
    x = random_logits(gen, B, L, V, ties=kind == "ties", neg_inf=kind == "neg_inf").to(dtype)
    tok_c, lp_c = ops.topk_logprobs(x, k)
    tok_g, lp_g = ops.topk_logprobs(x.cuda(), k, num_splits=num_splits)
    _assert_split_close(tok_c, lp_c, tok_g, lp_g, x)


@pytest.mark.parametrize("num_splits", [2, 8, 33])
def test_topk_split_flags_bad_rows(num_splits) -> None:
    x = torch.randn(2, 3, 1000)
    x[0, 1, 7] = float("nan")  # first chunk
    x[0, 2, 999] = float("nan")  # last chunk
    x[1, 2, :] = float("-inf")
    x[1, 0, 500] = float("inf")  # a middle chunk
    x[1, 1, :900] = float("-inf")  # most chunks all -inf, the row still good
    tok, lp, err = ops.topk_logprobs_flagged(x.cuda(), 5, num_splits=num_splits)
    assert err.cpu().tolist() == [[0, 1, 1], [1, 0, 2]]
    for b, d in ((0, 1), (0, 2), (1, 0), (1, 2)):
        assert tok[b, d].cpu().tolist() == [0, 1, 2, 3, 4]
        assert (lp[b, d] == -1e4).all()
    for b, d in ((0, 0), (1, 1)):
        good_tok, good_lp = ops.topk_logprobs(x[b : b + 1, d : d + 1], 5)
        _assert_split_close(
            good_tok,
            good_lp,
            tok[b : b + 1, d : d + 1],
            lp[b : b + 1, d : d + 1],
            x[b : b + 1, d : d + 1],
        )


def test_topk_split_single_finite_and_all_clamped() -> None:
    # One finite logit per row (lp 0, then V - 1 ties at the -1e4 clamp broken by id).
    x = torch.full((1, 2, 4099), float("-inf"))
    x[0, 0, 4098] = 3.0
    x[0, 1, 0] = -2.0
    for splits in (2, 8, 33):
        tok_c, lp_c = ops.topk_logprobs(x, 4096)
        tok_g, lp_g = ops.topk_logprobs(x.cuda(), 4096, num_splits=splits)
        assert torch.equal(tok_c, tok_g.cpu())
        assert torch.equal(lp_c.view(torch.int32), lp_g.cpu().view(torch.int32))


def test_topk_split_workspace_checks() -> None:
    x = torch.randn(1, 2, 1000, device="cuda")
    C = ops.ext()
    need = C.topk_logprobs_workspace_bytes(1, 2, 1000, 5, 8)
    assert need == 2 * 8 * (8 * 5 + 16)
    assert C.topk_logprobs_workspace_bytes(1, 2, 1000, 5, 1) == 0
    tok = torch.empty((1, 2, 5), dtype=torch.int32, device="cuda")
    lp = torch.empty((1, 2, 5), dtype=torch.float32, device="cuda")
    small = torch.empty(need - 1, dtype=torch.uint8, device="cuda")
    dl = ops.dl
    with pytest.raises(ValueError, match="workspace"):
        C.topk_logprobs_split(dl(x), 5, dl(tok), dl(lp), None, 8, None, 0)
    with pytest.raises(ValueError, match="workspace: expected at least"):
        C.topk_logprobs_split(dl(x), 5, dl(tok), dl(lp), None, 8, dl(small), 0)
    with pytest.raises(ValueError, match="num_splits"):
        ops.topk_logprobs(x, 5, num_splits=-1)


@pytest.mark.parametrize("num_splits", [2, 8, 33])
def test_topk_split_graph_replay(num_splits) -> None:
    gen = torch.Generator().manual_seed(0)
    x = random_logits(gen, 1, 15, 151936).cuda()
    C = ops.ext()
    ws = torch.empty(
        C.topk_logprobs_workspace_bytes(1, 15, 151936, 64, num_splits),
        dtype=torch.uint8,
        device="cuda",
    )
    tok = torch.empty((1, 15, 64), dtype=torch.int32, device="cuda")
    lp = torch.empty((1, 15, 64), dtype=torch.float32, device="cuda")
    err = torch.empty((1, 15), dtype=torch.int32, device="cuda")

    def run() -> None:
        C.topk_logprobs_split(
            ops.dl(x),
            64,
            ops.dl(tok),
            ops.dl(lp),
            ops.dl(err),
            num_splits,
            ops.dl(ws),
            torch.cuda.current_stream().cuda_stream,
        )

    run()  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for seed in (1, 2):
        new = random_logits(torch.Generator().manual_seed(seed), 1, 15, 151936)
        x.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        ref_tok, ref_lp = ops.topk_logprobs(new, 64)
        _assert_split_close(ref_tok, ref_lp, tok, lp, new)
        assert (err.cpu() == 0).all()


# ---- ddtree_select -----------------------------------------------------------------------------

SELECT_CASES = [
    # (B, L, V, budget)
    (1, 0, 5, 1),
    (1, 1, 1, 1),
    (2, 3, 2, 1),
    (1, 15, 33, 16),
    (3, 15, 151, 64),
    (1, 15, 1000, 256),
    (2, 7, 3, 100),  # the lattice holds fewer nodes than the budget
    (1, 15, 2000, 1024),
    (1, 15, 5000, 4096),
    (2, 40, 9, 300),
]


@pytest.mark.parametrize(("B", "L", "V", "budget"), SELECT_CASES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("root", [False, True])
def test_ddtree_select_cuda_matches_cpu(B, L, V, budget, ties, root) -> None:
    gen = torch.Generator().manual_seed(B * 131 + L * 17 + V + budget + ties)
    x = random_logits(gen, B, L, V, ties=ties)
    k = max(1, min(budget, V))
    tok, lp = ops.topk_logprobs(x, k)
    root_token = torch.randint(0, V, (B,), generator=gen) if root else None
    cpu = ops.ddtree_select_from_candidates(tok, lp, budget, root_token)
    gpu = ops.ddtree_select_from_candidates(
        tok.cuda(), lp.cuda(), budget, None if root_token is None else root_token.cuda()
    )
    _assert_tree_equal(cpu, gpu)


@pytest.mark.parametrize("seed", range(40))
def test_ddtree_select_cuda_fuzz(seed: int) -> None:
    gen = torch.Generator().manual_seed(1000 + seed)
    B, L, V = 1 + seed % 3, 1 + seed % 16, 2 + (seed * 37) % 300
    budget = 1 + (seed * 53) % 700
    x = random_logits(gen, B, L, V, ties=seed % 2 == 0, neg_inf=seed % 3 == 0)
    k = max(1, min(budget, V, 1 + seed * 7 % 50)) if seed % 4 == 0 else max(1, min(budget, V))
    tok, lp = ops.topk_logprobs(x, k)
    cpu = ops.ddtree_select_from_candidates(tok, lp, budget)
    gpu = ops.ddtree_select_from_candidates(tok.cuda(), lp.cuda(), budget)
    _assert_tree_equal(cpu, gpu)


def test_ddtree_end_to_end_on_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(5)
    x = random_logits(gen, 2, 15, 151936).to(torch.bfloat16)
    cpu = ops.ddtree_select(x, 256)
    gpu = ops.ddtree_select(x.cuda(), 256)
    _assert_tree_equal(cpu, gpu)


@pytest.mark.parametrize("budget", [64, 2048])  # shared-memory and workspace paths
def test_ddtree_select_cuda_graph_replay(budget: int) -> None:
    B, L, V = 2, 15, 3000
    gen = torch.Generator().manual_seed(budget)
    tok, lp = ops.topk_logprobs(random_logits(gen, B, L, V), budget)
    tok_d, lp_d = tok.cuda(), lp.cuda()
    root = torch.tensor([1, 2], device="cuda")
    ops.ddtree_select_from_candidates(tok_d, lp_d, budget, root)  # warm-up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tree = ops.ddtree_select_from_candidates(tok_d, lp_d, budget, root)
    for seed in (11, 12):
        g2 = torch.Generator().manual_seed(seed)
        new_tok, new_lp = ops.topk_logprobs(random_logits(g2, B, L, V), budget)
        tok_d.copy_(new_tok)
        lp_d.copy_(new_lp)
        root.copy_(torch.tensor([seed, seed + 1]))
        graph.replay()
        ref = ops.ddtree_select_from_candidates(new_tok, new_lp, budget, root.cpu())
        _assert_tree_equal(ref, tree)


def test_ddtree_select_workspace_query() -> None:
    C = __import__("difftree_rt._C", fromlist=["_C"])
    assert C.ddtree_select_workspace_bytes(1, 15, 256, 256) == 0  # fits in shared memory
    assert C.ddtree_select_workspace_bytes(3, 15, 4096, 4096) > 0


# ---- node_select -------------------------------------------------------------------------------

NODE_CASES = [(1, 1, 1), (2, 3, 31), (1, 17, 1000), (2, 5, 151936), (1, 4, 262144), (3, 9, 4099)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("B", "N", "V"), NODE_CASES)
@pytest.mark.parametrize(
    ("t", "k", "p"),
    [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 50, 1.0), (1.0, 0, 0.9), (1.3, 20, 0.8), (0.5, 1, 0.0)],
)
def test_node_select_cuda_matches_cpu(dtype, B, N, V, t, k, p) -> None:
    x, temp, top_k, top_p, seed, rnd = node_select_case(dtype, B, N, V, t, k, p)
    cpu = ops.node_select(x, temp, top_k, top_p, seed, rnd)
    gpu = ops.node_select(
        x.cuda(), temp.cuda(), top_k.cuda(), top_p.cuda(), seed.cuda(), rnd.cuda()
    )
    assert torch.equal(cpu, gpu.cpu())


def test_node_select_cuda_graph_replay() -> None:
    B, N, V = 2, 9, 5000
    gen = torch.Generator().manual_seed(3)
    x = random_logits(gen, B, N, V).cuda()
    temp = torch.tensor([1.0, 0.0], device="cuda")
    top_k = torch.tensor([100, 0], device="cuda")
    top_p = torch.tensor([0.9, 1.0], device="cuda")
    seed = torch.tensor([7, 8], device="cuda")
    rnd = torch.tensor([0, 0], device="cuda")
    ops.node_select(x, temp, top_k, top_p, seed, rnd)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.node_select(x, temp, top_k, top_p, seed, rnd)
    for r in (1, 2, 3):
        x.copy_(random_logits(torch.Generator().manual_seed(r), B, N, V))
        rnd.fill_(r)
        temp.copy_(torch.tensor([1.0, 0.5 * (r - 1)]))
        graph.replay()
        ref = ops.node_select(x.cpu(), temp.cpu(), top_k.cpu(), top_p.cpu(), seed.cpu(), rnd.cpu())
        assert torch.equal(out.cpu(), ref)
