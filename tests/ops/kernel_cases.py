"""Seeded inputs shared by the GPU kernel tests (tests/ops/test_cuda_*.py) and the emulated-kernel
tests (tests/emu): CaDDTree cost rows, TAPS pools, D²SD drafts, tree walks, KV-commit paths,
node_select settings (CPU tensors)."""

from __future__ import annotations

import torch
from tests.conftest import random_logits

from difftree_rt import ops
from difftree_rt.policies.taps import taps_pool


def cost_rows(gen: torch.Generator, B: int, budget: int, kind: str = "convex"):
    n = torch.arange(budget + 1, dtype=torch.float64)
    rows = []
    for _ in range(B):
        a, b, c = (float(torch.rand((), generator=gen)) for _ in range(3))
        if kind == "flat":
            rows.append(torch.ones_like(n))
        elif kind == "steep":
            rows.append(1 + 10.0 * n)
        else:
            rows.append(1 + a * 0.05 * n + b * 1e-3 * n**2 + c * 0.01 * n.sqrt())
    return torch.stack(rows).float(), torch.rand(B, generator=gen).float()


def taps_log_qc(pool, gen: torch.Generator, kind: str) -> torch.Tensor:
    if kind == "ties":  # few distinct values, exact 0 and -0.0 included: many equal reaches
        x = -(torch.randint(0, 3, pool.token.shape, generator=gen).float() * 0.5)
    elif kind == "zero":
        x = torch.zeros(pool.token.shape)
    else:
        x = -torch.rand(pool.token.shape, generator=gen) * 3
    return x.float()


def taps_case(seed: int, B: int, L: int, V: int, width: int, pool_size: int, kind: str):
    gen = torch.Generator().manual_seed(seed)
    x = random_logits(gen, B, L, V, ties=seed % 3 == 0)
    tok, lp = ops.topk_logprobs(x, max(1, min(width, V)))
    root = torch.randint(0, V, (B,), generator=gen)
    pool = taps_pool(tok, lp, width, pool_size, root)
    return pool, taps_log_qc(pool, gen, kind), gen


def d2sd_trunk_logprob(gen: torch.Generator, B: int, L: int, kind: str) -> torch.Tensor:
    if kind == "ties":  # few distinct values, exact 0 (c = 1: r = 0, log r = -inf) included
        return -(torch.randint(0, 3, (B, L), generator=gen).float() * 0.5)
    if kind == "peaked":  # c close to 1: the expm1/log branch of log1mexp
        return (-torch.rand(B, L, generator=gen) * 1e-3).float()
    if kind == "flat":  # c small: the exp/log1p branch
        return (-1.0 - torch.rand(B, L, generator=gen) * 30).float()
    return (-torch.rand(B, L, generator=gen) * 4).float()


def d2sd_select_case(seed: int, B: int, L1: int, L2: int, K: int, V: int, ties: bool):
    gen = torch.Generator().manual_seed(seed)
    trunk_token = torch.randint(0, V, (B, L1), generator=gen)
    trunk_logprob = (-torch.rand(B, L1, generator=gen) * 4).float()
    hi = min(L1, L2)
    boundary = torch.randint(-1, hi, (B, K), generator=gen).to(torch.int32)
    branch_token = torch.randint(0, V, (B, K, L2), generator=gen)
    branch_logprob = (-torch.rand(B, K, L2, generator=gen) * 4).float()
    if ties:  # few distinct values, exact 0 included: many equal scores and merged rows
        trunk_logprob = -(torch.randint(0, 3, (B, L1), generator=gen).float() * 0.5)
        branch_logprob = -(torch.randint(0, 3, (B, K, L2), generator=gen).float() * 0.5)
    root = torch.randint(0, V, (B,), generator=gen)
    return trunk_token, trunk_logprob, boundary, branch_token, branch_logprob, root


def kv_commit_case(D: int, dtype: torch.dtype, H: int, num_caches: int):  # type: ignore[no-untyped-def]
    """(caches, base_len, path, accepted): three requests accepting 0, 5 and 16 nodes of a
    64-row cache, non-contiguous paths."""
    gen = torch.Generator().manual_seed(D)
    B, S, P = 3, 64, 17
    paths, accs = [], []
    for b in range(B):
        acc = [0, 5, 16][b]
        nodes = sorted(torch.randperm(40, generator=gen)[:acc].add(1).tolist())
        paths.append([0, *nodes] + [-1] * (P - 1 - acc))
        accs.append(acc)
    path, accepted = torch.tensor(paths), torch.tensor(accs)
    base = torch.tensor([3, 0, 7])
    caches = [torch.randn((B, H, S, D), generator=gen).to(dtype) for _ in range(num_caches)]
    return caches, base, path, accepted


def node_select_case(dtype: torch.dtype, B: int, N: int, V: int, t: float, k: int, p: float):  # type: ignore[no-untyped-def]
    """(logits, temperature, top_k, top_p, seed, round_idx) for ops.node_select."""
    gen = torch.Generator().manual_seed(B + N + V)
    x = random_logits(gen, B, N, V, ties=V > 100, neg_inf=V % 2 == 1).to(dtype)
    seed = torch.randint(0, 2**62, (B,), generator=gen)
    rnd = torch.randint(0, 2**40, (B,), generator=gen)
    temp = torch.full((B,), t)
    top_k = torch.full((B,), k, dtype=torch.int32)
    top_p = torch.full((B,), p)
    return x, temp, top_k, top_p, seed, rnd


def node_select_tie_case(kind: str, B: int, N: int, V: int, t: float, k: int, p: float):  # type: ignore[no-untyped-def]
    """node_select_case whose k-th value is shared by many tokens (top-k keeps its ties):
    ``levels``: a few distinct values; ``zeros``: -1, +0.0, -0.0 and 1 (-0 ties +0);
    ``neg_inf``: fewer finite tokens than k (the k-th value is -inf). float32 logits."""
    gen = torch.Generator().manual_seed(V + k)
    if kind == "levels":
        x = torch.randint(0, 5, (B, N, V), generator=gen).float() * 0.75
    elif kind == "zeros":
        x = torch.randint(-1, 2, (B, N, V), generator=gen).float()
        x = torch.where((x == 0) & (torch.rand(x.shape, generator=gen) < 0.5), -0.0, x)
    else:
        x = torch.full((B, N, V), float("-inf"))
        finite = torch.rand((B, N, V), generator=gen) < (k / 2) / V
        x = torch.where(finite, torch.randn((B, N, V), generator=gen), x)
    seed = torch.randint(0, 2**62, (B,), generator=gen)
    rnd = torch.randint(0, 2**40, (B,), generator=gen)
    temp = torch.full((B,), t)
    top_k = torch.full((B,), k, dtype=torch.int32)
    top_p = torch.full((B,), p)
    return x, temp, top_k, top_p, seed, rnd


def tree_walk_case(seed: int):  # type: ignore[no-untyped-def]
    """(tree, node_choice, stop tokens or None, remaining or None) for ops.tree_walk."""
    gen = torch.Generator().manual_seed(seed)
    B, L, V = 1 + seed % 5, 1 + seed % 8, 2 + seed % 5
    tree = ops.ddtree_select(random_logits(gen, B, L, V), 1 + seed % 60)
    choice = torch.randint(0, V, (B, tree.capacity), generator=gen)
    stops = torch.randint(0, V, (2,), generator=gen) if seed % 3 == 0 else None
    remaining = torch.randint(0, L + 3, (B,), generator=gen) if seed % 2 else None
    return tree, choice, stops, remaining
