"""Tree verification on a hybrid Gated-DeltaNet target on the CPU (issue 17): what a tree costs
against a chain of the same size, and what the commit costs.

A Qwen3.5-shaped target scaled down to CPU size (random fp32 weights; ``--layers`` decoder
layers, three Gated-DeltaNet layers per full-attention one; the shape is printed and stored),
after a causal prefill of ``--prefill`` tokens:

1. ``TargetAdapter.verify`` of a DDTree tree of N nodes (``--nodes``) vs an N-token chain
   (``anc=None``), and the one-token AR step (``decode``) for scale;
2. the ops alone at one linear layer's shape: ``gdn_verify`` and ``gdn_conv``, tree vs chain;
3. the commit alone: ``TargetAdapter.commit`` of an accepted path of ``--paths`` nodes after a
   verify of each tree (the states are restored and the tree re-verified, untimed, before each
   timed call), and the ops ``gdn_commit`` + ``gdn_conv_commit`` at one layer's shape;
4. the same verify / commit on a pure-attention Qwen3 target of the same size, for contrast.

Every table is timed interleaved (one sample of each variant per repeat, so machine drift hits
all alike): medians with p10/p90 over ``--repeats``, at each ``--threads`` setting. Writes
``bench_hybrid-*.json`` (stamped with the machine, versions and git sha) and a PNG under
``--out-dir`` (default bench/results/).

    python bench/bench_hybrid.py --threads 1 2 --repeats 30 \
        --out-dir bench/results/issue17-hybrid-cpu
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, print_table, stamp, summarize, write_json
from difftree_rt import ops
from difftree_rt.models import TargetAdapter
from difftree_rt.reference.gated_delta import conv_sources, parents_from_anc
from difftree_rt.tree import DraftTree

Timed = Callable[[], object]
#: (setup or None, timed call): setup runs untimed right before each timed call.
Case = tuple[Timed | None, Timed]


# ---- timing --------------------------------------------------------------------------------


def interleaved(cases: dict[str, Case], repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """µs per timed call of every case, one sample of each per repeat (order rotated per
    repeat so no case always runs first): ``{label: summarize(samples)}``."""
    labels = list(cases)
    for _ in range(warmup):
        for label in labels:
            setup, fn = cases[label]
            if setup is not None:
                setup()
            fn()
    samples: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(repeats):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            setup, fn = cases[label]
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            samples[label].append((time.perf_counter() - t0) * 1e6)
    return {label: summarize(s) for label, s in samples.items()}


# ---- models and trees ----------------------------------------------------------------------


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The shape shared by the hybrid and the attention target (printed and stored)."""
    every = args.full_every
    types = ["full_attention" if (i + 1) % every == 0 else "linear_attention"
             for i in range(args.layers)]  # fmt: skip
    return dict(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or 3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.attn_heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.attn_head_dim,
        linear_num_key_heads=args.heads_k,
        linear_num_value_heads=args.heads_v,
        linear_key_head_dim=args.head_dim,
        linear_value_head_dim=args.head_dim,
        linear_conv_kernel_dim=args.conv_kernel,
        layer_types=types,
        max_position_embeddings=args.prefill + 4 * max(args.nodes) + 64,
        tie_word_embeddings=False,
    )


def make_target(kind: str, cfg: dict[str, Any]) -> torch.nn.Module:
    """A random fp32 ``hybrid`` (Qwen3.5) or ``attention`` (Qwen3, every layer full) target."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    if kind == "hybrid":
        model: torch.nn.Module = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**cfg))
    else:
        keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim",
                "max_position_embeddings", "tie_word_embeddings")  # fmt: skip
        model = Qwen3ForCausalLM(Qwen3Config(**{k: cfg[k] for k in keep}))
    return model.float().eval()


def make_tree(n: int, vocab: int = 1000) -> DraftTree:
    """A DDTree tree of n nodes (15 draft positions) from draft logits with three likely tokens
    per position, one confident (a deep spine with branches, as a good drafter gives; N=16:
    depth 9, N=64: depth 10, deep enough for an 8-node path)."""
    gen = torch.Generator().manual_seed(n)
    logits = torch.randn((1, 15, vocab), generator=gen)
    for boost in (10.5, 8.0, 7.0):
        top = torch.randint(0, vocab, (15,), generator=gen)
        logits[0, torch.arange(15), top] += boost
    return ops.ddtree_select(logits, n - 1, root_token=torch.tensor([1]))


def tree_shape(tree: DraftTree) -> dict[str, Any]:
    depth = tree.depth[0, : int(tree.num_nodes[0])].long()
    return {"nodes": int(tree.num_nodes[0]), "max_depth": int(depth.max()),
            "nodes_per_depth": torch.bincount(depth).tolist()}  # fmt: skip


def deepest_path(tree: DraftTree, length: int) -> torch.Tensor:
    """``[1, length]`` int64: the first ``length`` nodes of the root-to-deepest-node path."""
    node = int(tree.depth[0].argmax())
    path = [node]
    while path[-1] != 0:
        path.append(int(tree.parent[0, path[-1]]))
    path.reverse()
    if len(path) < length:
        raise ValueError(f"--paths {length}: the tree's deepest path has {len(path)} nodes")
    return torch.tensor([path[:length]], dtype=torch.long)


class Snapshot:
    """The adapter state a commit / decode changes (committed length, linear states), restored
    between timed calls. K/V rows need none: forwards only write rows past the committed ones."""

    def __init__(self, adapter: TargetAdapter) -> None:
        self.adapter = adapter
        cache = adapter.cache
        self.tensors = [cache.base_len, *cache.linear.tensors()]
        self.saved = [t.clone() for t in self.tensors]
        self.bound, self.exact = cache.len_bound, cache.len_exact

    def restore(self) -> None:
        for t, s in zip(self.tensors, self.saved, strict=True):
            t.copy_(s)
        self.adapter.cache.len_bound = self.bound
        self.adapter.cache.len_exact = self.exact


# ---- 1 + 3 + 4: adapter verify / decode / commit --------------------------------------------


def bench_adapter(kind: str, cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Verify (tree vs chain per N), decode, and commit per (N, path length) of one target."""
    model = make_target(kind, cfg)
    max_n = max(args.nodes)
    adapter = TargetAdapter(model, max_length=args.prefill + max_n + 8, validate=False)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, args.vocab, (1, args.prefill), generator=gen)
    adapter.prefill(prompt, last_logits_only=True)
    snap = Snapshot(adapter)

    cases: dict[str, Case] = {}
    trees = {}
    for n in args.nodes:
        tree = make_tree(n)
        trees[n] = tree
        toks = torch.randint(0, args.vocab, (1, n), generator=gen)
        depth, anc, nodes = tree.depth, tree.anc, tree.num_nodes
        chain_depth = torch.arange(n, dtype=torch.int32)[None]
        cases[f"tree{n}"] = (
            None,
            lambda t=toks, d=depth, a=anc, m=nodes: adapter.verify(t, d, a, m),
        )
        cases[f"chain{n}"] = (None, lambda t=toks, d=chain_depth: adapter.verify(t, d, None))
    step = torch.randint(0, args.vocab, (1, 1), generator=gen)
    cases["decode"] = (snap.restore, lambda: adapter.decode(step))
    verify = interleaved(cases, args.repeats, args.warmup)
    snap.restore()

    rows = []
    for n in args.nodes:
        tree, chain = verify[f"tree{n}"], verify[f"chain{n}"]
        rows.append({"nodes": n, "tree": tree, "chain": chain,
                     "tree_over_chain": tree["median"] / chain["median"],
                     "tree_shape": tree_shape(trees[n])})  # fmt: skip

    commit_cases: dict[str, Case] = {}
    for n in args.nodes:
        tree = trees[n]
        toks = torch.randint(0, args.vocab, (1, n), generator=gen)

        def setup(t: torch.Tensor = toks, tr: DraftTree = tree) -> None:
            snap.restore()
            adapter.verify(t, tr.depth, tr.anc, tr.num_nodes)

        for length in args.paths:
            path = deepest_path(tree, length)
            accepted = torch.tensor([length - 1])
            commit_cases[f"N{n}/path{length}"] = (
                setup,
                lambda p=path, a=accepted: adapter.commit(p, a),
            )
    commits = interleaved(commit_cases, args.repeats, args.warmup)
    snap.restore()
    commit_rows = [
        {"nodes": n, "path": length, "commit": commits[f"N{n}/path{length}"]}
        for n in args.nodes for length in args.paths
    ]  # fmt: skip
    return {"verify": rows, "decode": verify["decode"], "commit": commit_rows}


# ---- 2 + 3: the ops at one linear layer's shape ---------------------------------------------


def bench_ops(args: argparse.Namespace) -> dict[str, Any]:
    """gdn_verify / gdn_conv tree vs chain per N; gdn_commit + gdn_conv_commit per path length."""
    h_k, h_v, d, k_w = args.heads_k, args.heads_v, args.head_dim, args.conv_kernel
    chans = 2 * h_k * d + h_v * d
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn((chans, k_w), generator=gen) * 0.3
    tail = torch.randn((1, chans, k_w - 1), generator=gen)
    state0 = torch.randn((1, h_v, d, d), generator=gen) * 0.1
    cases: dict[str, Case] = {}
    commit_cases: dict[str, Case] = {}
    for n in args.nodes:
        tree = make_tree(n)
        q = torch.randn((1, n, h_k, d), generator=gen)
        k = torch.randn((1, n, h_k, d), generator=gen)
        v = torch.randn((1, n, h_v, d), generator=gen)
        g = -torch.nn.functional.softplus(torch.randn((1, n, h_v), generator=gen))
        beta = torch.rand((1, n, h_v), generator=gen)
        x = torch.randn((1, n, chans), generator=gen)
        src_tree = conv_sources(parents_from_anc(tree.anc, 1, n, x.device), k_w)
        src_chain = conv_sources(parents_from_anc(None, 1, n, x.device), k_w)
        for name, anc, src in (("tree", tree.anc, src_tree), ("chain", None, src_chain)):
            rule = (q, k, v, g, beta, state0, anc)
            cases[f"gdn_verify/{name}{n}"] = (None, lambda r=rule: ops.gdn_verify(*r))
            cases[f"gdn_conv/{name}{n}"] = (
                None, lambda s=src, x=x: ops.gdn_conv(x, tail, weight, None, s, True)
            )  # fmt: skip
        _, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state0, tree.anc)
        state, conv = state0.clone(), tail.clone()

        def restore(state: torch.Tensor = state, conv: torch.Tensor = conv) -> None:
            state.copy_(state0)
            conv.copy_(tail)

        for length in args.paths:
            path = deepest_path(tree, length)
            acc = torch.tensor([length - 1])

            def commit(st=state, cv=conv, x=x, s=src_tree, kh=k_hat, de=delta, gc=gcum,
                       p=path, a=acc) -> None:  # fmt: skip
                ops.gdn_commit(st, kh, de, gc, p, a)
                ops.gdn_conv_commit(cv, x, s, p, a)

            commit_cases[f"N{n}/path{length}"] = (restore, commit)
    times = interleaved(cases, args.op_repeats, args.warmup)
    commits = interleaved(commit_cases, args.op_repeats, args.warmup)
    rows = []
    for op in ("gdn_verify", "gdn_conv"):
        for n in args.nodes:
            tree, chain = times[f"{op}/tree{n}"], times[f"{op}/chain{n}"]
            rows.append({"op": op, "nodes": n, "tree": tree, "chain": chain,
                         "tree_over_chain": tree["median"] / chain["median"]})  # fmt: skip
    commit_rows = [
        {"nodes": n, "path": length, "commit": commits[f"N{n}/path{length}"]}
        for n in args.nodes for length in args.paths
    ]  # fmt: skip
    return {"shape": {"H_k": h_k, "H_v": h_v, "D_k": d, "D_v": d, "C": chans, "K": k_w},
            "rows": rows, "commit": commit_rows}  # fmt: skip


# ---- report --------------------------------------------------------------------------------


def ms(t: dict[str, float]) -> list[float]:
    return [t["median"] / 1e3, t["p10"] / 1e3, t["p90"] / 1e3]


def us(t: dict[str, float]) -> list[float]:
    return [t["median"], t["p10"], t["p90"]]


def print_block(block: dict[str, Any]) -> None:
    print(f"\n== threads {block['threads']}: TargetAdapter.verify after a "
          f"{block['prefill']}-token prefill (ms) ==")  # fmt: skip
    rows: list[list[Any]] = []
    for kind in ("hybrid", "attention"):
        res = block[kind]
        for r in res["verify"]:
            rows.append([kind, r["nodes"], *ms(r["tree"]), *ms(r["chain"]),
                         f"{r['tree_over_chain']:.2f}"])  # fmt: skip
        rows.append([kind, "decode", *ms(res["decode"]), "", "", "", ""])
    print_table(
        ["target", "N", "tree", "p10", "p90", "chain", "p10", "p90", "tree/chain"],
        [[f"{c:.2f}" if isinstance(c, float) else c for c in r] for r in rows],
    )
    print(f"\n-- ops at one linear layer {block['ops']['shape']} (µs) --")
    print_table(["op", "N", "tree", "p10", "p90", "chain", "p10", "p90", "tree/chain"],
                [[r["op"], r["nodes"], *us(r["tree"]), *us(r["chain"]),
                  f"{r['tree_over_chain']:.2f}"] for r in block["ops"]["rows"]])  # fmt: skip
    print("\n-- commit of an accepted path after a verify of N nodes --")
    crow = []
    for i, r in enumerate(block["hybrid"]["commit"]):
        a = block["attention"]["commit"][i]["commit"]
        o = block["ops"]["commit"][i]["commit"]
        crow.append([r["nodes"], r["path"], *ms(r["commit"]), *ms(a), *us(o)])
    print_table(["N", "path", "hybrid ms", "p10", "p90", "attention ms", "p10", "p90",
                 "gdn_commit+conv_commit µs", "p10", "p90"],
                [[f"{c:.3f}" if isinstance(c, float) and j < 8 else c
                  for j, c in enumerate(r)] for r in crow])  # fmt: skip


def plot(blocks: list[dict[str, Any]], path: Path) -> Path:
    """One row of panels per thread count: verify (ms), the ops (µs), the commit (ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(blocks), 3, figsize=(16, 4.2 * len(blocks)), squeeze=False)

    def bars(ax: Any, labels: Sequence[str], groups: dict[str, list[dict[str, float]]],
             scale: float, unit: str, title: str) -> None:  # fmt: skip
        width = 0.8 / len(groups)
        for j, (name, ts) in enumerate(groups.items()):
            med = [t["median"] / scale for t in ts]
            err = [[(t["median"] - t["p10"]) / scale for t in ts],
                   [(t["p90"] - t["median"]) / scale for t in ts]]  # fmt: skip
            xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(ts))]
            ax.bar(xs, med, width, yerr=err, capsize=3, label=name)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    for row, b in zip(axes, blocks, strict=True):
        th = f"{b['threads']} thread{'s' if b['threads'] > 1 else ''}"
        labels = [f"{kind}\nN={r['nodes']}" for kind in ("hybrid", "attention")
                  for r in b[kind]["verify"]]  # fmt: skip
        tree = [r["tree"] for kind in ("hybrid", "attention") for r in b[kind]["verify"]]
        chain = [r["chain"] for kind in ("hybrid", "attention") for r in b[kind]["verify"]]
        bars(
            row[0],
            labels,
            {"tree": tree, "chain": chain},
            1e3,
            "ms",
            f"TargetAdapter.verify, {th} (p10-p90 bars)",
        )
        for kind, style in (("hybrid", "--"), ("attention", ":")):
            row[0].axhline(
                b[kind]["decode"]["median"] / 1e3,
                color="gray",
                ls=style,
                lw=1,
                label=f"{kind} decode (1 token)",
            )
        row[0].legend(fontsize=8)
        ops_rows = b["ops"]["rows"]
        bars(
            row[1],
            [f"{r['op']}\nN={r['nodes']}" for r in ops_rows],
            {"tree": [r["tree"] for r in ops_rows], "chain": [r["chain"] for r in ops_rows]},
            1.0,
            "µs",
            f"one linear layer's ops, {th}",
        )
        com = b["hybrid"]["commit"]
        bars(row[2], [f"N={r['nodes']}\npath {r['path']}" for r in com],
             {"hybrid": [r["commit"] for r in com],
              "attention": [r["commit"] for r in b["attention"]["commit"]]},
             1e3, "ms", f"TargetAdapter.commit, {th}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument(
        "--full-every",
        type=int,
        default=4,
        help="every k-th layer is full attention (4: three linear per full)",
    )
    ap.add_argument("--intermediate", type=int, default=0, help="MLP size (0: 3 x hidden)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--attn-heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--attn-head-dim", type=int, default=128)
    ap.add_argument("--heads-k", type=int, default=4, help="linear key heads H_k")
    ap.add_argument("--heads-v", type=int, default=8, help="linear value heads H_v")
    ap.add_argument("--head-dim", type=int, default=128, help="linear head dim D (= D_k = D_v)")
    ap.add_argument("--conv-kernel", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--nodes", type=int, nargs="+", default=[16, 64])
    ap.add_argument(
        "--paths",
        type=int,
        nargs="+",
        default=[1, 4, 8],
        help="accepted path lengths (nodes, root included) to commit",
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--op-repeats", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    positive = ("hidden", "layers", "full_every", "vocab", "attn_heads", "kv_heads",
                "attn_head_dim", "heads_k", "heads_v", "head_dim", "conv_kernel", "prefill",
                "repeats", "op_repeats")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.full_every < 2 or args.layers < args.full_every:
        ap.error("--full-every must be >= 2 and <= --layers (some linear and some full layers)")
    if args.heads_v % args.heads_k:
        ap.error(f"--heads-v ({args.heads_v}) must be a multiple of --heads-k ({args.heads_k})")
    if any(n < 2 or n > 512 for n in args.nodes):
        ap.error(f"--nodes must be in [2, 512], got {args.nodes}")
    if any(p < 1 for p in args.paths) or any(t < 1 for t in args.threads):
        ap.error("--paths and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = model_config(args)
    print("shape:", {k: v for k, v in cfg.items() if k != "layer_types"})
    print("layer_types:", cfg["layer_types"])
    for n in args.nodes:
        print(f"tree N={n}:", tree_shape(make_tree(n)))
    default_threads = torch.get_num_threads()
    blocks = []
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            block: dict[str, Any] = {"threads": threads, "prefill": args.prefill}
            for kind in ("hybrid", "attention"):
                block[kind] = bench_adapter(kind, cfg, args)
            block["ops"] = bench_ops(args)
            print_block(block)
            blocks.append(block)
    finally:
        torch.set_num_threads(default_threads)
    payload = {
        "bench": "hybrid",
        "stamp": stamp("cpu"),
        "config": cfg,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "timing": "µs per call, interleaved (one sample of each case per repeat, order "
        "rotated); commits and decodes restore the committed state (and re-run the verify) "
        "untimed before each timed call; fp32, batch 1, validate=False",
        "results": blocks,
    }
    path = write_json("bench_hybrid", payload, args.out_dir)
    print(f"wrote {path}")
    if not args.no_plot:
        ts = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        png = plot(blocks, (args.out_dir or RESULTS) / f"bench_hybrid-{ts}.png")
        print(f"wrote {png}")
    return payload


if __name__ == "__main__":
    main()
