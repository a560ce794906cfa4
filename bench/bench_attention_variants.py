"""tree_attention's attention variants on a gpt-oss-20b-shaped layer (64 query heads, 8 KV heads,
D = 64, bf16, batch 1): the CUDA kernel plain (full attention) vs with sinks (gpt-oss's full
layers) vs with window 128 + sinks over the full cache and over a ring of W - 1 + N slots
(gpt-oss's sliding layers), each against the CPU op on the same inputs; contexts 4k / 32k, trees
of 16 / 64 nodes. Eager (CUDA events around one call) and CUDA-graph (10 calls per graph) medians
with p10/p90; the CPU op wall time (fewer repeats). A correctness spot check per row: the kernel
against the PyTorch reference (fp32 on the same bf16 inputs). Needs a CUDA build and a GPU.

    python bench/bench_attention_variants.py [--contexts 4096 32768] [--nodes 16 64]
        [--window 128] [--repeats 50] [--cpu-repeats 3] [--no-cpu] [--quick]

Writes bench/results/bench_attention_variants-*.json (issue 16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_tree_attention import event_time
from bench.common import graph_time, print_table, stamp, time_fn, write_json
from difftree_rt import build_info, ops
from difftree_rt._ext import ext
from difftree_rt.reference.attention import tree_attention_reference

VARIANTS = ("plain", "sinks", "window_sinks", "ring_window_sinks")


def make_tree(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A DDTree tree of n nodes from random draft logits: anc, num_nodes, depth."""
    gen = torch.Generator().manual_seed(n)
    if n == 1:
        one = torch.ones((1, 1), dtype=torch.int32)
        return one[..., None], one[0], torch.zeros((1, 1), dtype=torch.int32)
    logits = torch.randn((1, 15, 2000), generator=gen) * 3
    tree = ops.ddtree_select(logits, n - 1)
    return tree.anc, tree.num_nodes, tree.depth


def bench_one(ctx: int, n: int, args: argparse.Namespace) -> dict[str, Any]:
    dev, dtype = "cuda", torch.bfloat16
    H_q, H_kv, D, W = args.heads_q, args.heads_kv, args.head_dim, args.window
    S = ctx + n
    gen = torch.Generator(device=dev).manual_seed(ctx + n)
    q = torch.randn((1, n, H_q, D), device=dev, dtype=dtype, generator=gen).transpose(1, 2)
    k = torch.randn((1, H_kv, S, D), device=dev, dtype=dtype, generator=gen)
    v = torch.randn((1, H_kv, S, D), device=dev, dtype=dtype, generator=gen)
    anc, nodes, depth = (t.to(dev) for t in make_tree(n))
    prefix = torch.tensor([ctx], device=dev)
    sinks = torch.randn(H_q, device=dev, generator=gen) + 2.0
    slots = W - 1 + n
    # The ring holds positions [ctx + n - slots, ctx + n) at slot p % slots: what a sliding
    # layer's ring holds after committing ctx rows and writing the tree.
    pos = torch.arange(ctx + n - slots, ctx + n, device=dev)
    k_ring = torch.empty((1, H_kv, slots, D), device=dev, dtype=dtype)
    v_ring = torch.empty_like(k_ring)
    k_ring[:, :, pos % slots] = k[:, :, pos]
    v_ring[:, :, pos % slots] = v[:, :, pos]
    scale = D**-0.5
    calls: dict[str, dict[str, Any]] = {
        "plain": {"k": k, "v": v},
        "sinks": {"k": k, "v": v, "sinks": sinks},
        "window_sinks": {"k": k, "v": v, "sinks": sinks, "window": W, "depth": depth},
        "ring_window_sinks": {
            "k": k_ring, "v": v_ring, "sinks": sinks, "window": W, "depth": depth, "ring": True,
        },
    }  # fmt: skip

    def op(name: str, device: str = dev) -> Callable[[], torch.Tensor]:
        kw = dict(calls[name])
        kk, vv = kw.pop("k"), kw.pop("v")
        t = [x.to(device) for x in (q, kk, vv, prefix, anc, nodes)]
        kw = {
            key: (val.to(device) if isinstance(val, torch.Tensor) else val)
            for key, val in kw.items()
        }
        return lambda: ops.tree_attention(*t, scale, **kw)  # type: ignore[arg-type]

    row: dict[str, Any] = {
        "context": ctx,
        "nodes": n,
        "ring_slots": slots,
        "num_splits_full": int(ext().tree_attention_num_splits(1, H_q, H_kv, n, S)),
        "num_splits_ring": int(ext().tree_attention_num_splits(1, H_q, H_kv, n, slots)),
    }
    for name in VARIANTS:
        fn = op(name)
        try:
            row[name] = event_time(fn, args.repeats)
            row[name + "_graph"] = graph_time(fn, args.repeats, inner=10)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            row[name] = {"error": str(exc).splitlines()[0][:200]}
            torch.cuda.empty_cache()
            continue
        # Correctness: the kernel vs the fp32 reference on the same bf16 inputs.
        kw = dict(calls[name])
        kk, vv = kw.pop("k"), kw.pop("v")
        exact = tree_attention_reference(
            q.float(),
            kk.float(),
            vv.float(),
            prefix,
            anc,
            nodes,
            scale,
            **kw,  # type: ignore[arg-type]
        )
        row[name + "_max_abs_err"] = (fn().float() - exact).abs().max().item()
        if not args.no_cpu:
            cpu_fn = op(name, "cpu")
            row[name + "_cpu"] = time_fn(cpu_fn, args.cpu_repeats, warmup=1)
            row[name + "_cpu_vs_cuda_max_abs_diff"] = (
                (cpu_fn().float() - fn().float().cpu()).abs().max().item()
            )
    return row


def med(row: dict[str, Any], key: str) -> float:
    r = row.get(key, {})
    return float(r.get("median", float("nan"))) if isinstance(r, dict) else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--heads-q", type=int, default=64)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--cpu-repeats", type=int, default=3)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU op timings")
    ap.add_argument("--quick", action="store_true", help="4k context, 16 nodes only")
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not build_info()["cuda_compiled"]:
        print("needs a GPU and a CUDA build of difftree_rt", file=sys.stderr)
        return 1
    if args.quick:
        args.contexts, args.nodes = [4096], [16]
    rows = []
    for ctx in args.contexts:
        for n in args.nodes:
            rows.append(bench_one(ctx, n, args))
            torch.cuda.empty_cache()
    table = []
    for r in rows:
        plain = med(r, "plain_graph")
        table.append(
            [
                r["context"],
                r["nodes"],
                plain,
                med(r, "sinks_graph"),
                med(r, "window_sinks_graph"),
                med(r, "ring_window_sinks_graph"),
                plain / med(r, "window_sinks_graph"),
                med(r, "plain_cpu"),
                med(r, "window_sinks_cpu"),
                med(r, "ring_window_sinks_cpu"),
                f"{max(r.get(v + '_max_abs_err', float('nan')) for v in VARIANTS):.2e}",
            ]
        )
    print_table(
        [
            "ctx",
            "nodes",
            "plain µs",
            "sinks µs",
            "win+sinks µs",
            "ring win+sinks µs",
            "plain/win",
            "CPU plain µs",
            "CPU win+sinks µs",
            "CPU ring µs",
            "max|err|",
        ],
        table,
    )
    payload = {
        "bench": "attention_variants",
        "stamp": stamp("cuda"),
        "config": {
            "heads_q": args.heads_q,
            "heads_kv": args.heads_kv,
            "head_dim": args.head_dim,
            "window": args.window,
            "dtype": "bfloat16",
            "batch": 1,
            "repeats": args.repeats,
            "cpu_repeats": args.cpu_repeats,
            "timing": "µs per call; *_graph = CUDA-graph replay (10 calls per graph); *_cpu = "
            "the CPU op's wall time on the same inputs",
        },
        "rows": rows,
    }
    path = write_json("bench_attention_variants", payload, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
