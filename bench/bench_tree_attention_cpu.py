"""tree_attention on the CPU (the fp32-accumulating oracle op) with gpt-oss's attention variant:
a sliding window of W = 128 positions with per-head sinks, over a full cache and over a ring of
W - 1 + N + 8 slots, against plain tree attention over the whole prefix. One gpt-oss-20b layer
(64 query heads, 8 KV heads, D = 64), batch 1, a DDTree tree of N nodes, prefix 4096. The
PyTorch reference (the eager path) on the same inputs for scale. Wall time per call (µs): median,
p10, p90 over repeats.

    python bench/bench_tree_attention_cpu.py [--prefix 4096] [--nodes 16 64] [--window 128]
        [--repeats 15] [--dtype bfloat16]

Writes bench/results/bench_tree_attention_cpu-*.json (device, versions, git sha in "stamp").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, stamp, time_fn, write_json
from difftree_rt import ops
from difftree_rt.reference.attention import tree_attention_reference

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def bench_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    H_q, H_kv, D, W, P = args.heads_q, args.heads_kv, args.head_dim, args.window, args.prefix
    dtype = DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(n)
    tree = ops.ddtree_select(torch.randn((1, 15, 2000), generator=gen) * 3, n - 1)
    anc, nodes, depth = tree.anc, tree.num_nodes, tree.depth
    q = torch.randn((1, n, H_q, D), generator=gen).to(dtype).transpose(1, 2)  # HF layout
    S_full = P + n
    k = torch.randn((1, H_kv, S_full, D), generator=gen).to(dtype)
    v = torch.randn((1, H_kv, S_full, D), generator=gen).to(dtype)
    S_ring = W - 1 + n + 8
    # The ring holds the same rows at slot r % S_ring (the rows a window can reach and the tree).
    rows = torch.arange(max(0, P - W + 1), P + n)
    k_ring = torch.zeros((1, H_kv, S_ring, D), dtype=dtype)
    v_ring = torch.zeros((1, H_kv, S_ring, D), dtype=dtype)
    k_ring[:, :, rows % S_ring] = k[:, :, rows]
    v_ring[:, :, rows % S_ring] = v[:, :, rows]
    sinks = torch.randn(H_q, generator=gen)
    prefix = torch.tensor([P])
    scale = D**-0.5

    def plain() -> object:
        return ops.tree_attention(q, k, v, prefix, anc, nodes, scale)

    def windowed() -> object:
        return ops.tree_attention(
            q, k, v, prefix, anc, nodes, scale, depth=depth, window=W, sinks=sinks
        )

    def ring() -> object:
        return ops.tree_attention(
            q,
            k_ring,
            v_ring,
            prefix,
            anc,
            nodes,
            scale,
            depth=depth,
            window=W,
            sinks=sinks,
            ring=True,
        )

    def ref_plain() -> object:
        return tree_attention_reference(q, k, v, prefix, anc, nodes, scale)

    def ref_windowed() -> object:
        return tree_attention_reference(
            q, k, v, prefix, anc, nodes, scale, depth=depth, window=W, sinks=sinks
        )

    row: dict[str, Any] = {"nodes": n, "prefix": P, "window": W, "ring_slots": S_ring}
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("op_plain", plain, args.repeats),
        ("op_window_sinks", windowed, args.repeats),
        ("op_window_sinks_ring", ring, args.repeats),
        ("reference_plain", ref_plain, args.repeats),
        ("reference_window_sinks", ref_windowed, args.repeats),
    ]
    for name, fn, reps in cases:
        row[name] = time_fn(fn, repeats=reps, warmup=2)
    # The three op forms agree where they must: ring == full-cache window (same keys, same order).
    a, b = windowed(), ring()
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    row["ring_equals_full_window"] = bool(torch.equal(a, b))
    r = ref_windowed()
    assert isinstance(r, torch.Tensor)
    row["max_abs_diff_vs_reference"] = (a.float() - r.float()).abs().max().item()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", type=int, default=4096)
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--heads-q", type=int, default=64)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [bench_one(n, args) for n in args.nodes]

    def med(r: dict[str, Any], key: str, q: str = "median") -> float:
        return float(r[key][q]) / 1e3  # ms

    table = []
    for r in rows:
        for key in (
            "op_plain",
            "op_window_sinks",
            "op_window_sinks_ring",
            "reference_plain",
            "reference_window_sinks",
        ):
            table.append(
                [
                    r["nodes"],
                    key,
                    med(r, key),
                    med(r, key, "p10"),
                    med(r, key, "p90"),
                    med(r, "op_plain") / med(r, key),
                ]
            )
    print_table(["N", "case", "median ms", "p10 ms", "p90 ms", "op_plain / case"], table)
    for r in rows:
        print(
            f"N={r['nodes']}: ring == full-cache window: {r['ring_equals_full_window']}, "
            f"max|op - reference| = {r['max_abs_diff_vs_reference']:.2e}"
        )
    path = write_json(
        "bench_tree_attention_cpu",
        {"stamp": stamp("cpu"), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
        args.out_dir,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
