"""Shared PRESTO test cases (CPU tensors): repetitive token streams fed in random chunks, n-gram
tables built with ``ops.ngram_extend``, and seeded ``presto_select`` inputs. Used by the CUDA
tests (tests/ops/test_cuda_presto.py) and the emulated-kernel tests (tests/emu)."""

from __future__ import annotations

import torch
from tests.conftest import random_logits

from difftree_rt import ops
from difftree_rt.policies import presto_table_size


def repetitive_stream(gen: torch.Generator, V: int, T: int) -> list[int]:
    """A repetitive stream (a few motifs, some noise) so that contexts of order >= 2 recur."""
    motifs = [
        torch.randint(0, V, (int(torch.randint(2, 6, (), generator=gen)),), generator=gen).tolist()
        for _ in range(3)
    ]
    out: list[int] = []
    while len(out) < T:
        if float(torch.rand((), generator=gen)) < 0.15:
            out.append(int(torch.randint(0, V, (), generator=gen)))
        else:
            out += motifs[int(torch.randint(0, 3, (), generator=gen))]
    return out[:T]


def feed_chunks(
    gen: torch.Generator, streams: list[list[int]], width: int, fixed: bool, idx64: bool
):
    """Feeds `streams` (one per request) in random chunks: (tokens [B, T], num_tokens [B]) with
    junk past num_tokens (which the ops ignore). fixed: T = width always (graph replay)."""
    B = len(streams)
    pos = [0] * B
    dtype = torch.int64 if idx64 else torch.int32
    while any(p < len(s) for p, s in zip(pos, streams)):
        T = width if fixed else int(torch.randint(1, width + 1, (), generator=gen))
        tokens = torch.randint(-3, 1000, (B, T), generator=gen)
        num = torch.zeros(B, dtype=torch.int64)
        for b in range(B):
            n = min(int(torch.randint(0, T + 1, (), generator=gen)), len(streams[b]) - pos[b])
            tokens[b, :n] = torch.tensor(streams[b][pos[b] : pos[b] + n], dtype=torch.int64)
            num[b] = n
            pos[b] += n
        yield tokens.to(dtype), num.to(dtype)


def table_rows(keys: torch.Tensor, counts: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per table row: the sorted (key, count) pairs of its used slots (positions may differ)."""
    keys, counts = keys.cpu().reshape(-1, keys.shape[-1]), counts.cpu().reshape(-1, keys.shape[-1])
    rows = []
    for k, c in zip(keys, counts):
        used = k != 0
        rows.append(sorted(zip(k[used].tolist(), c[used].tolist())))
    return rows


def empty_tables(B: int, H: int, order: int, device: str = "cpu"):
    keys = torch.zeros((B, H), dtype=torch.int64, device=device)
    counts = torch.zeros((B, H), dtype=torch.int32, device=device)
    history = torch.full((B, order - 1), -1, dtype=torch.int64, device=device)
    return keys, counts, history


def context_of(stream: list[int], order: int) -> list[int]:
    c = order - 1
    tail = stream[-c:] if c > 0 else []
    return [-1] * (c - len(tail)) + tail


EXTEND_CASES = [
    # (B, order, T, width)
    (1, 1, 30, 5),
    (3, 2, 100, 9),
    (2, 3, 150, 17),
    (4, 4, 200, 33),
    (2, 8, 120, 40),
    (5, 3, 40, 1),
    (1, 5, 300, 300),  # one chunk
]


def presto_case(
    seed: int,
    B: int,
    L: int,
    budget: int,
    order: int,
    lam: float,
    *,
    shared: bool,
    root: bool,
    idx64: bool = False,
    T: int | None = None,
    V: int | None = None,
    K: int | None = None,
    alpha: float | None = None,
    H: int | None = None,
) -> dict:
    """Candidates and an n-gram table (CPU tensors) for presto_select_from_candidates."""
    gen = torch.Generator().manual_seed(seed)
    V = V if V is not None else [6, 20, 64][seed % 3]
    if K is None:
        K = [V, min(V, budget), min(V, 3), min(V, 1 + seed % 7)][(seed // 3) % 4]
    T = T if T is not None else [0, 3, 60, 250][(seed // 2) % 4]
    alpha = alpha if alpha is not None else [1.0, 0.1, 5.0][(seed // 5) % 3]
    x = random_logits(gen, B, L, V, ties=seed % 5 == 0)
    tok, lp = ops.topk_logprobs(x, K)
    streams = [repetitive_stream(gen, V, max(0, T - 3 * b)) for b in range(B)]
    if shared:  # one table for the batch, built from all the streams
        H = H or presto_table_size(order, B * T)
        keys, counts, hist = empty_tables(1, H, order)
        flat = torch.tensor([t for s in streams for t in s], dtype=torch.int64)[None]
        ops.ngram_extend(keys, counts, hist, flat, torch.tensor([flat.shape[1]]), order)
        keys, counts = keys[0].clone(), counts[0].clone()
    else:
        H = H or presto_table_size(order, T)
        keys, counts, hist = empty_tables(B, H, order)
        width = max(1, max(len(s) for s in streams))
        toks = torch.zeros((B, width), dtype=torch.int64)
        for b, s in enumerate(streams):
            toks[b, : len(s)] = torch.tensor(s, dtype=torch.int64)
        ops.ngram_extend(keys, counts, hist, toks, torch.tensor([len(s) for s in streams]), order)
    context = torch.tensor([context_of(s, order) for s in streams], dtype=torch.int64)
    context = context.reshape(B, order - 1)
    root_token = None
    if root:
        root_token = torch.tensor([s[-1] if s else b for b, s in enumerate(streams)])
    if idx64:
        tok = tok.long()
    else:
        context = context.int()
        root_token = None if root_token is None else root_token.int()
    return dict(
        cand_token=tok,
        cand_logprob=lp,
        budget=budget,
        context=context,
        keys=keys,
        counts=counts,
        order=order,
        vocab=V,
        lam=lam,
        alpha=alpha,
        root_token=root_token,
    )


def select_on(case: dict, device: str):
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    budget = args.pop("budget")
    tok, lp, ctx = args.pop("cand_token"), args.pop("cand_logprob"), args.pop("context")
    keys, counts = args.pop("keys"), args.pop("counts")
    return ops.presto_select_from_candidates(tok, lp, budget, ctx, keys, counts, **args)
