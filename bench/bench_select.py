"""Tree selection: the C++ core vs the plain-PyTorch reference vs a straightforward Python
``heapq`` best-first build (the published DDTree code's approach: torch log-softmax + top-K, copy
to host lists, heapq, dense ancestor matrix), from logits and from candidates.

    python bench/bench_select.py [--budgets 16 32 ... 1024] [--vocab 151936] [--depth 15]

Prints a table (µs per call: median [p10, p90]) and writes bench/results/bench_select-*.json.
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, stamp, time_fn, write_json
from difftree_rt import ops, reference
from difftree_rt.cli.demo_select import drafter_like_logits


def heapq_from_lists(lp: list[list[float]], tok: list[list[int]], budget: int) -> tuple:
    """Best-first top-`budget` prefixes with Python's heapq; returns (tokens, parents, depths,
    ancestor matrix) like a host-side tree builder would."""
    L, K = len(lp), len(lp[0]) if lp else 0
    tokens, parents, depths, scores = [-1], [-1], [0], [0.0]
    heap = [(-lp[0][0], 0, 0, 0)] if L and K else []  # (-score, depth idx, rank, parent)
    while heap and len(tokens) <= budget:
        neg, d, r, p = heapq.heappop(heap)
        i = len(tokens)
        tokens.append(tok[d][r])
        parents.append(p)
        depths.append(d + 1)
        scores.append(-neg)
        if r + 1 < K:
            heapq.heappush(heap, (-(scores[p] + lp[d][r + 1]), d, r + 1, p))
        if d + 1 < L:
            heapq.heappush(heap, (neg - lp[d + 1][0], d + 1, 0, i))
    n = len(tokens)
    anc = [[False] * n for _ in range(n)]
    for i in range(n):
        anc[i][i] = True
        if i:
            anc[i][:i] = anc[parents[i]][:i]
            anc[i][i] = True
    return tokens, parents, depths, anc


def heapq_from_logits(logits: torch.Tensor, budget: int) -> tuple:
    lp = torch.log_softmax(logits[0].float(), dim=-1)
    top_lp, top_tok = torch.topk(lp, min(budget, lp.shape[-1]), dim=-1)
    return heapq_from_lists(top_lp.tolist(), top_tok.tolist(), budget)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--depth", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--ref-repeats", type=int, default=5, help="repeats for the slow reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    logits = drafter_like_logits(1, args.depth, args.vocab, args.seed)
    results = []
    rows = []
    for budget in args.budgets:
        k = min(budget, args.vocab)
        tok, lp = ops.topk_logprobs(logits, k)
        # Same tree from both implementations (the bench would be meaningless otherwise).
        a = ops.ddtree_select_from_candidates(tok, lp, budget)
        b = reference.ddtree_select_from_candidates(tok, lp, budget)
        assert all(torch.equal(x, y) for x, y in zip(a.arrays(), b.arrays()))
        lp_list, tok_list = lp[0].tolist(), tok[0].tolist()
        r = {
            "budget": budget,
            "logits/cpp": time_fn(lambda: ops.ddtree_select(logits, budget), args.repeats),
            "logits/heapq": time_fn(lambda: heapq_from_logits(logits, budget), args.repeats),
            "logits/reference": time_fn(
                lambda: reference.ddtree_select(logits, budget), args.ref_repeats, warmup=1
            ),
            "cand/cpp": time_fn(
                lambda: ops.ddtree_select_from_candidates(tok, lp, budget), args.repeats
            ),
            "cand/heapq": time_fn(
                lambda: heapq_from_lists(lp_list, tok_list, budget), args.repeats
            ),
            "cand/reference": time_fn(
                lambda: reference.ddtree_select_from_candidates(tok, lp, budget),
                args.ref_repeats,
                warmup=1,
            ),
        }
        results.append(r)

        def cell(key: str) -> str:
            t = r[key]
            return f"{t['median']:.0f} [{t['p10']:.0f}, {t['p90']:.0f}]"

        rows.append(
            [
                budget,
                cell("logits/cpp"),
                cell("logits/heapq"),
                cell("logits/reference"),
                cell("cand/cpp"),
                cell("cand/heapq"),
                cell("cand/reference"),
                f"{r['cand/heapq']['median'] / r['cand/cpp']['median']:.1f}x",
            ]
        )
    print(f"tree selection, B=1, L={args.depth}, V={args.vocab}, µs per call: median [p10, p90]")
    print_table(
        [
            "budget",
            "logits: C++",
            "logits: heapq",
            "logits: reference",
            "cand: C++",
            "cand: heapq",
            "cand: reference",
            "heapq/C++ (cand)",
        ],
        rows,
    )
    payload = {
        "bench": "select",
        "config": vars(args) | {"out": str(args.out)},
        "stamp": stamp("cpu"),
        "results": results,
    }
    path = write_json("bench_select", payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
