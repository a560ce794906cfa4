"""Sliding-window layers on a ring vs a full-length cache: memory and attention time.

Vocabulary: S_max cache rows, W window, N tree nodes, T_max rows of one forward, H_q / H_kv
heads, D head dim.

Memory: the target KV cache of a gpt-oss-20b-shaped model (24 layers alternating sliding W=128
and full attention, H_kv 8, D 64, bf16) at a long context, with every layer full-length vs the
windowed layers on rings of ``W - 1 + T_max`` rows (``StaticKVCache`` allocated on the meta
device: exact sizes, no memory). Speed: one windowed layer's tree-verify attention (N nodes of a
random tree at a committed prefix of ``--context`` rows) on the CPU, full-length cache + window
mask vs ring, for the plain-PyTorch path the model runs on the CPU and, when the extension has
it, the C++ CPU op. Medians with p10/p90 over repeats. Writes bench/results/bench_ring_cache-*.json.

    python bench/bench_ring_cache.py --context 32768 --repeats 7
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, stamp, summarize, write_json  # noqa: E402
from difftree_rt.models.static_cache import StaticKVCache  # noqa: E402
from difftree_rt.models.target_layers import FULL, SLIDING, LayerSpec  # noqa: E402
from difftree_rt.reference.attention import tree_attention_reference  # noqa: E402


def gpt_oss_20b_specs(window: int) -> list[LayerSpec]:
    """gpt-oss-20b's attention layers: 24, alternating sliding (W) / full, H_kv 8, D 64."""
    kinds = [SLIDING if i % 2 == 0 else FULL for i in range(24)]
    return [
        LayerSpec(i, k, window if k == SLIDING else 0, (8, 64), (8, 64), sinks=True)
        for i, k in enumerate(kinds)
    ]


def cache_bytes(specs: list[LayerSpec], rows: int, t_max: int | None) -> int:
    cache = StaticKVCache(specs, 1, rows, torch.bfloat16, "meta", max_forward_rows=t_max)
    return sum(t.numel() * t.element_size() for t in cache.key_cache + cache.value_cache)


def random_tree(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``anc [1, N, ceil(N/32)]`` int32 and ``depth [1, N]`` of a random tree (parent < child)."""
    parent = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    words = (n + 31) // 32
    anc = torch.zeros(1, n, words, dtype=torch.int64)
    depth = torch.zeros(1, n, dtype=torch.long)
    for i in range(n):
        j = i
        while j >= 0:
            anc[0, i, j // 32] |= 1 << (j % 32)
            j = parent[j]
        depth[0, i] = depth[0, parent[i]] + 1 if i else 0
    anc = torch.where(anc >= 2**31, anc - 2**32, anc).to(torch.int32)
    return anc, depth


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


def attention_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    h_q, h_kv, dim, window, ctx = 64, 8, 64, args.window, args.context
    rows: list[dict[str, Any]] = []
    try:
        from difftree_rt import ops

        ops.tree_attention  # noqa: B018
        have_op = "ring" in ops.tree_attention.__code__.co_varnames
    except ImportError:
        have_op = False
    for n in args.nodes:
        anc, depth = random_tree(n, gen)
        q = torch.randn(1, h_q, n, dim, generator=gen)
        prefix = torch.tensor([ctx])
        full_k = torch.randn(1, h_kv, ctx + n, dim, generator=gen)
        full_v = torch.randn(1, h_kv, ctx + n, dim, generator=gen)
        slots = window - 1 + max(args.t_max, n)
        # The ring holds the same rows: row r of the full cache at slot r % slots.
        keep = torch.arange(ctx + n - slots, ctx + n)
        ring_k = torch.empty(1, h_kv, slots, dim)
        ring_v = torch.empty(1, h_kv, slots, dim)
        ring_k[:, :, keep % slots] = full_k[:, :, keep]
        ring_v[:, :, keep % slots] = full_v[:, :, keep]
        sinks = torch.randn(h_q, generator=gen)
        common = dict(depth=depth, window=window, sinks=sinks)
        cases: dict[str, Callable[[], object]] = {
            "reference full": lambda: tree_attention_reference(
                q, full_k, full_v, prefix, anc, None, 0.125, kv_bound=ctx, **common
            ),
            "reference ring": lambda: tree_attention_reference(
                q, ring_k, ring_v, prefix, anc, None, 0.125, ring=True, **common
            ),
        }
        if have_op:
            cases["cpu op full"] = lambda: ops.tree_attention(
                q, full_k, full_v, prefix, anc, None, 0.125, **common
            )
            cases["cpu op ring"] = lambda: ops.tree_attention(
                q, ring_k, ring_v, prefix, anc, None, 0.125, ring=True, **common
            )
        want = cases["reference full"]()
        for name, fn in cases.items():
            err = float((fn() - want).abs().max())  # type: ignore[operator]
            rows.append({"nodes": n, "case": name, "ms": timed(fn, args.repeats), "err": err})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context", type=int, default=32768, help="committed rows")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--nodes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--t-max", type=int, default=512, help="ring rows beyond the window")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = gpt_oss_20b_specs(args.window)
    rows = args.context + 256
    full = cache_bytes(specs, rows, None)
    ring = cache_bytes(specs, rows, args.t_max)
    print(
        f"gpt-oss-20b KV cache at {rows} rows (bf16, B=1): full-length {full / 2**30:.3f} GiB, "
        f"windowed layers on rings {ring / 2**30:.3f} GiB ({full / ring:.2f}x smaller)"
    )
    att = attention_cases(args)
    print_table(
        ["N", "case", "median ms", "p10", "p90", "max err"],
        [[r["nodes"], r["case"], r["ms"]["median"], r["ms"]["p10"], r["ms"]["p90"],
          f"{r['err']:.1e}"] for r in att],
    )  # fmt: skip
    path = write_json(
        "bench_ring_cache",
        {
            "stamp": stamp("cpu"),
            "args": vars(args),
            "memory_bytes": {"rows": rows, "full_length": full, "ring": ring},
            "attention": att,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
