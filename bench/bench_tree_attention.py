"""tree_attention (CUDA kernel) vs PyTorch SDPA with a dense additive [N, ctx + N] mask (what the
published DDTree code does) vs SDPA without a mask for the same query count (the floor: plain
attention of N queries over ctx + N keys). Qwen3-8B head shape (32 q heads, 8 kv heads, D = 128),
bf16, batch 1, one layer; context x tree nodes grid. Eager (CUDA events around one call) and
CUDA-graph (per call, 10 calls per graph) medians with p10/p90. Needs a CUDA build and a GPU.

    python bench/bench_tree_attention.py [--contexts 1024 8192 32768] [--nodes 16 64 256 1024]
        [--repeats 50] [--quick]

Targets (issue 5): >= 3x faster than dense-mask SDPA at 8k context / 64 nodes, and within 1.3x
of unmasked SDPA with the same query count. Writes bench/results/bench_tree_attention-*.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import graph_time, print_table, stamp, summarize, write_json
from difftree_rt import build_info, ops
from difftree_rt._ext import ext


def event_time(fn: Callable[[], object], repeats: int, warmup: int = 5) -> dict[str, float]:
    """µs per eager call (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b) * 1e3)
    return summarize(samples)


def make_tree(n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n_nodes)
    if n_nodes == 1:
        return torch.ones((1, 1, 1), dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    logits = torch.randn((1, 15, 2000), generator=gen) * 3
    tree = ops.ddtree_select(logits, n_nodes - 1)
    return tree.anc, tree.num_nodes


def dense_mask(anc: torch.Tensor, ctx: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, N, ctx + N] additive mask: prefix visible, ancestor-or-self inside the tree."""
    j = torch.arange(n, device=anc.device)
    bits = ((anc[0][:, j // 32] >> (j % 32).to(torch.int32)) & 1).bool()  # [N, N]
    vis = torch.cat([torch.ones(n, ctx, dtype=torch.bool, device=anc.device), bits], dim=1)
    zero = torch.zeros((), dtype=dtype, device=anc.device)
    return torch.where(vis, zero, torch.tensor(float("-inf"), dtype=dtype, device=anc.device))[
        None, None
    ]


def sdpa_gqa(q, k, v, mask) -> torch.Tensor:
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except (TypeError, RuntimeError):  # older torch: expand the kv heads
        g = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask
        )


def bench_one(ctx: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    dev, dtype = "cuda", torch.bfloat16
    H_q, H_kv, D = args.heads_q, args.heads_kv, args.head_dim
    S = ctx + n
    gen = torch.Generator(device=dev).manual_seed(ctx + n)
    q = torch.randn((1, n, H_q, D), device=dev, dtype=dtype, generator=gen).transpose(1, 2)
    k = torch.randn((1, H_kv, S, D), device=dev, dtype=dtype, generator=gen)
    v = torch.randn((1, H_kv, S, D), device=dev, dtype=dtype, generator=gen)
    anc, nodes = make_tree(n)
    anc, nodes = anc.to(dev), nodes.to(dev)
    prefix = torch.tensor([ctx], device=dev)
    scale = D**-0.5
    mask = dense_mask(anc, ctx, n, dtype)
    qc = q.contiguous()

    def ours() -> object:
        return ops.tree_attention(q, k, v, prefix, anc, nodes, scale)

    def ours_chain() -> object:
        return ops.tree_attention(q, k, v, prefix, None, None, scale, is_chain=True)

    def dense() -> object:
        return sdpa_gqa(qc, k, v, mask)

    def nomask() -> object:
        return sdpa_gqa(qc, k, v, None)

    row: dict[str, Any] = {
        "context": ctx,
        "nodes": n,
        "num_splits": int(ext().tree_attention_num_splits(1, H_q, H_kv, n, S)),
    }
    for name, fn in (
        ("tree_attention", ours),
        ("tree_attention_chain", ours_chain),
        ("sdpa_dense_mask", dense),
        ("sdpa_no_mask", nomask),
    ):
        try:
            row[name] = event_time(fn, args.repeats)
            row[name + "_graph"] = graph_time(fn, args.repeats, inner=10)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            row[name] = {"error": str(exc).splitlines()[0][:200]}
            torch.cuda.empty_cache()
    # Correctness spot check against SDPA with the dense mask (same math, bf16).
    diff = (ours().float() - dense().float()).abs().max().item()
    row["max_abs_diff_vs_dense_sdpa"] = diff
    return row


def med(row: dict[str, Any], key: str) -> float:
    r = row.get(key, {})
    return float(r.get("median", float("nan"))) if isinstance(r, dict) else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--heads-q", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="8k context, 64 nodes only")
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not build_info()["cuda_compiled"]:
        print("needs a GPU and a CUDA build of difftree_rt", file=sys.stderr)
        return 1
    if args.quick:
        args.contexts, args.nodes = [8192], [64]
    rows = []
    for ctx in args.contexts:
        for n in args.nodes:
            rows.append(bench_one(ctx, n, args))
            torch.cuda.empty_cache()
    table = []
    for r in rows:
        ours, dense, nomask = (
            med(r, "tree_attention_graph"),
            med(r, "sdpa_dense_mask_graph"),
            med(r, "sdpa_no_mask_graph"),
        )
        table.append(
            [
                r["context"],
                r["nodes"],
                r["num_splits"],
                ours,
                med(r, "tree_attention_chain_graph"),
                dense,
                nomask,
                dense / ours,
                ours / nomask,
                med(r, "tree_attention"),
                f"{r['max_abs_diff_vs_dense_sdpa']:.2e}",
            ]
        )
    print_table(
        [
            "ctx",
            "nodes",
            "splits",
            "tree µs",
            "chain µs",
            "dense-mask SDPA µs",
            "no-mask SDPA µs",
            "dense/tree",
            "tree/no-mask",
            "tree eager µs",
            "max|diff|",
        ],
        table,
    )
    head = next((r for r in rows if r["context"] == 8192 and r["nodes"] == 64), None)
    targets = {}
    if head is not None:
        ours = med(head, "tree_attention_graph")
        targets = {
            "speedup_vs_dense_at_8k_64": med(head, "sdpa_dense_mask_graph") / ours,
            "ratio_vs_nomask_at_8k_64": ours / med(head, "sdpa_no_mask_graph"),
            "target_speedup_vs_dense": 3.0,
            "target_ratio_vs_nomask": 1.3,
        }
        print(targets)
    payload = {
        "bench": "tree_attention",
        "stamp": stamp("cuda"),
        "config": {
            "heads_q": args.heads_q,
            "heads_kv": args.heads_kv,
            "head_dim": args.head_dim,
            "dtype": "bfloat16",
            "batch": 1,
            "repeats": args.repeats,
            "timing": "µs per call; *_graph = CUDA-graph replay (10 calls per graph)",
        },
        "targets": targets,
        "rows": rows,
    }
    path = write_json("bench_tree_attention", payload, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
