"""Graph mode vs eager: rounds/s, per-round overhead, and the verify-cost curve (issue 6).

    python bench/bench_graph_round.py --models qwen3-0.6b qwen3-4b qwen3-8b   # GPU, bf16
    python bench/bench_graph_round.py --tiny                                 # CPU smoke test

Random-weight targets of realistic shape (Qwen3 configs; label results so) with a random DFlash
drafter. Per model, in one run:

* AR tokens/s (the target alone, same static cache), eager and in graph mode (one captured
  target step per round: the fair baseline for graph-mode speculative rounds);
* with ``--batch-sizes``: batched rounds/s and tokens/s at each B > 1, graphs off and on
  (``--batch-only`` runs just that section);
* chain and DDTree rounds/s, ms/round and τ with ``cuda_graphs`` off and on (a random drafter
  accepts ~nothing, so a round costs what a round costs, not what acceptance buys);
* per-round overhead = graph-mode round time minus the drafter forward alone minus the target
  verify forward alone (both timed on the same shapes, as CUDA graphs on a GPU), and its share
  of the round;
* verify latency vs tree nodes at contexts 1k/8k/32k (plus the draft cost per context),
  written as a CaDDTree :class:`~difftree_rt.policies.cost.CostTable` file per model and
  device (``bench/results/cost_table-<model>-<device>.json``; unit ms).

On CPU (``--tiny`` or ``--device cpu``) graph mode runs its static-buffer rounds eagerly and
plain wall-clock timers replace CUDA-graph timers. JSON in bench/results/bench_graph_round-*.json.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, graph_time, print_table, stamp, summarize, time_fn, write_json
from difftree_rt import SpeculativeDecoder, ops
from difftree_rt.engine.runner import span_bucket
from difftree_rt.models import DFlashDrafter
from difftree_rt.models.target import TargetAdapter
from difftree_rt.policies.cost import CostTable

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       vocab_size=151936),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     vocab_size=151936),
}  # fmt: skip


def build_target(name: str, dtype: torch.dtype, device: str, seed: int) -> torch.nn.Module:
    """A random-weight Qwen3 of config ``name``, built directly in ``dtype`` on ``device``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        **CONFIGS[name],
        max_position_embeddings=40960,
        initializer_range=0.25 if name == "tiny" else 0.02,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # an 8B model in fp32 first would need twice the memory
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


class Timer:
    """µs per call: a CUDA-graph replay timer on CUDA (device time, no launch overhead), a
    synchronised wall-clock timer on CPU."""

    def __init__(self, device: str, repeats: int, inner: int) -> None:
        self.cuda = device.startswith("cuda")
        self.repeats, self.inner = repeats, inner

    def __call__(self, fn: Any) -> dict[str, float]:
        if self.cuda:
            return graph_time(fn, repeats=self.repeats, inner=self.inner)
        return time_fn(fn, repeats=self.repeats, warmup=1)


def run_generate(dec: SpeculativeDecoder, prompt: torch.Tensor, new: int, runs: int) -> dict:
    """Decode-phase numbers of ``runs`` timed ``generate`` calls after one warm-up call."""
    dec.generate(prompt, new)  # warm-up: allocations, graph capture
    rounds, tokens, accepted, decode = 0, 0, 0, 0.0
    per_round: list[float] = []
    for _ in range(runs):
        s = dec.generate(prompt, new).stats
        rounds += max(s.rounds, 1)
        tokens += s.new_tokens
        accepted += sum(s.accepted_lengths)
        decode += s.decode_time
        per_round.append(1e3 * s.decode_time / max(s.rounds, 1))
    return {
        "rounds": rounds,
        "tokens": tokens,
        "tau": 1 + accepted / rounds,
        "decode_s": decode,
        "rounds_per_s": rounds / decode,
        "tokens_per_s": tokens / decode,
        "ms_per_round": summarize(per_round),
    }


def run_generate_batch(
    dec: SpeculativeDecoder, prompts: list[torch.Tensor], new: int, runs: int
) -> dict:
    """Decode-phase numbers of ``runs`` timed batched ``generate`` calls (after a warm-up):
    batched rounds per second and generated tokens per second over the whole batch."""
    dec.generate(prompts, new)  # warm-up: allocations, graph capture
    rounds, tokens, decode = 0, 0, 0.0
    per_round: list[float] = []
    for _ in range(runs):
        out = dec.generate(prompts, new)
        s = out.stats
        n_rounds = max(s.batch_rounds, 1)
        rounds += n_rounds
        tokens += s.new_tokens
        decode += s.decode_time
        per_round.append(1e3 * s.decode_time / n_rounds)
    return {
        "batch": len(prompts),
        "rounds": rounds,
        "tokens": tokens,
        "decode_s": decode,
        "rounds_per_s": rounds / decode,
        "tokens_per_s": tokens / decode,
        "ms_per_round": summarize(per_round),
    }


def bench_batches(
    target: torch.nn.Module, drafter: DFlashDrafter, args: argparse.Namespace, length: int
) -> list[dict[str, Any]]:
    """Batched rounds (B > 1, one batch bucket per B), graphs off vs on, chain and the first
    ddtree budget; B random prompts of ``--prompt-len`` tokens."""
    vocab = target.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    rows = []
    for num_b in args.batch_sizes:
        prompts = [
            torch.randint(0, vocab, (args.prompt_len,), generator=gen).to(args.device)
            for _ in range(num_b)
        ]
        for policy, budget in (("chain", args.block_size - 1), ("ddtree", args.budgets[0])):
            row: dict[str, Any] = {"batch": num_b, "policy": policy, "budget": budget}
            for graphs in (False, True):
                dec = SpeculativeDecoder(
                    target, drafter, policy, budget, max_length=length, profile=False,
                    cuda_graphs=graphs,
                )  # fmt: skip
                key = "graphs_on" if graphs else "graphs_off"
                row[key] = run_generate_batch(dec, prompts, args.max_new_tokens, args.runs)
                del dec
            rows.append(row)
    return rows


def random_tree(vocab: int, depth: int, nodes: int, device: str, seed: int) -> Any:
    """A DDTree over random peaked logits with ``nodes`` draft nodes (root token 0)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(1, depth, vocab, generator=gen) * 4).to(device)
    return ops.ddtree_select(logits, nodes, torch.zeros(1, dtype=torch.long, device=device))


def chain_verify_fn(adapter: TargetAdapter, nodes: int) -> Any:
    """One target verify of a chain of ``nodes`` draft tokens (causal, no ancestor mask)."""
    depth = torch.arange(nodes + 1, device=adapter.device)[None]
    tokens = torch.zeros_like(depth)
    return lambda: adapter.verify(tokens, depth, None, None)


def verify_fn(adapter: TargetAdapter, tree: Any) -> Any:
    """One target verify of ``tree`` (``None``: the root alone, a 1-row chain)."""
    if tree is None:
        return chain_verify_fn(adapter, 0)
    tokens = tree.token.clamp(min=0)
    return lambda: adapter.verify(tokens, tree.depth, tree.anc, tree.num_nodes)


def draft_fn(drafter: DFlashDrafter, ctx: int) -> Any:
    """One fixed-span drafter forward at context ``ctx`` (what a graph-mode round runs)."""
    s_len = drafter.block_size
    span = span_bucket(ctx + s_len, 1 << 30)
    cache = drafter.new_cache(batch_size=1, capacity=span)
    cache.lengths.fill_(ctx)
    block = drafter.make_block(torch.zeros(1, dtype=torch.long, device=drafter.device))
    return lambda: drafter.draft(block, cache, span)


@torch.inference_mode()
def bench_model(name: str, args: argparse.Namespace, timer: Timer) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    target = build_target(name, dtype, args.device, args.seed)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    drafter = DFlashDrafter.for_target(
        target, num_layers=args.drafter_layers, block_size=args.block_size, generator=gen
    )
    build_s = time.perf_counter() - t0
    vocab = target.config.vocab_size
    prompt = torch.randint(0, vocab, (1, args.prompt_len), generator=torch.Generator()).to(
        args.device
    )
    new = args.max_new_tokens
    out: dict[str, Any] = {"model": f"{name} (random weights)", "build_s": build_s, "runs": []}

    # ---- AR and rounds/s, graphs off vs on -------------------------------------------------
    length = args.prompt_len + new + max([*args.budgets, args.block_size]) + 1
    if args.batch_sizes:
        out["batches"] = bench_batches(target, drafter, args, length)
    if args.batch_only:
        return out
    # AR, the target alone: eager, and in graph mode (one captured target step per round: the
    # baseline a speculative round must beat).
    for key, graphs in (("ar_eager", False), ("ar", True)):
        ar = SpeculativeDecoder(
            target, None, "ar", max_length=length, profile=False, cuda_graphs=graphs
        )
        out[key] = run_generate(ar, prompt, new, args.runs)
        del ar
    configs = [("chain", args.block_size - 1)] + [("ddtree", b) for b in args.budgets]
    ctx = args.prompt_len + new // 2  # the mean context of the generation

    def off_on(policy: str, budget: int, model: Any, draft: Any) -> dict[str, Any]:
        """One config's generate numbers with graph mode off and on."""
        row: dict[str, Any] = {"policy": policy, "budget": budget}
        for graphs in (False, True):
            dec = SpeculativeDecoder(
                model, draft, policy, budget, max_length=length, profile=False,
                cuda_graphs=graphs,
            )  # fmt: skip
            row["graphs_on" if graphs else "graphs_off"] = run_generate(dec, prompt, new, args.runs)
            runner = dec._graph_runner
            if graphs and runner is not None and len(runner.buckets) > 1:
                # Tree-size buckets (caddtree): rounds per bucket and rounds that filled one.
                used = [nb for _, nb in runner.bucket_log]
                row["tree_buckets"] = {str(n): used.count(n) for n in runner.buckets}
                row["filled_rounds"] = runner.filled_rounds
            del dec
        row["graph_speedup"] = row["graphs_on"]["rounds_per_s"] / row["graphs_off"]["rounds_per_s"]
        return row

    for policy, budget in configs:
        row = off_on(policy, budget, target, drafter)
        # The two model forwards alone, on the round's shapes.
        adapter = TargetAdapter(
            target, max_length=length, feature_layers=drafter.target_layer_ids, validate=False
        )
        adapter.cache.base_len.fill_(ctx)
        adapter.cache.set_fixed_span(ctx)
        if policy == "chain":
            t_verify = timer(chain_verify_fn(adapter, budget))
        else:
            tree = random_tree(vocab, args.block_size - 1, budget, args.device, args.seed)
            t_verify = timer(verify_fn(adapter, tree))
        t_draft = timer(draft_fn(drafter, ctx))
        del adapter
        round_ms = row["graphs_on"]["ms_per_round"]["median"]
        forwards_ms = (t_verify["median"] + t_draft["median"]) / 1e3
        row.update(
            draft_us=t_draft,
            verify_us=t_verify,
            overhead_ms=round_ms - forwards_ms,
            overhead_frac=(round_ms - forwards_ms) / round_ms if round_ms > 0 else 0.0,
        )
        out["runs"].append(row)
    # Other graph-safe policies at the first budget: rounds/s with graphs off and on (their
    # round is not "one draft + one verify of a full tree": no overhead split here).
    for policy in args.extra_policies:
        out["runs"].append(off_on(policy, args.budgets[0], target, drafter))

    # ---- verify latency vs nodes per context -> CaDDTree cost table -------------------------
    verify_ms: list[list[float]] = []
    draft_ms: list[float] = []
    max_nodes = max(args.nodes)
    for c in args.contexts:
        adapter = TargetAdapter(
            target, max_length=c + max_nodes + 2, feature_layers=drafter.target_layer_ids,
            validate=False,
        )  # fmt: skip
        adapter.cache.base_len.fill_(c)
        adapter.cache.set_fixed_span(c)  # K/V contents do not matter for timing
        row_ms = []
        for n in args.nodes:
            tree = random_tree(vocab, args.block_size - 1, n, args.device, args.seed) if n else None
            row_ms.append(timer(verify_fn(adapter, tree))["median"] / 1e3)
        verify_ms.append(row_ms)
        draft_ms.append(timer(draft_fn(drafter, c))["median"] / 1e3)
        del adapter
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    device_name = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else "cpu"
    )
    table = CostTable(
        nodes=list(args.nodes),
        contexts=list(args.contexts),
        verify=[verify_ms],
        draft=[draft_ms],
        unit="ms",
        meta={
            "source": "bench/bench_graph_round.py",
            "model": f"{name} (random weights)",
            "device": device_name,
            "dtype": args.dtype,
            "drafter_layers": args.drafter_layers,
            "block_size": args.block_size,
            "stamp": stamp(args.device),
        },
    )
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    path = Path(args.out_dir) / f"cost_table-{name}-{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.save(path)
    out["cost_table"] = table.to_dict()
    out["cost_table_path"] = str(path)
    del target, drafter
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qwen3-0.6b", "qwen3-4b", "qwen3-8b"],
                    choices=sorted(CONFIGS))  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, few points")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--drafter-layers", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--budgets", nargs="+", type=int, default=[16, 64, 256], help="ddtree")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=2, help="timed generate calls per config")
    ap.add_argument("--contexts", nargs="+", type=int, default=[1024, 8192, 32768])
    ap.add_argument("--nodes", nargs="+", type=int,
                    default=[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512])  # fmt: skip
    ap.add_argument("--repeats", type=int, default=10, help="timer samples per point")
    ap.add_argument("--inner", type=int, default=5, help="calls per CUDA graph sample")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-policies", nargs="+", default=[],
                    choices=["caddtree", "taps", "d2sd", "presto"],
                    help="also time these graph-safe policies at the first budget")  # fmt: skip
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[],
                    help="also time batched rounds (B > 1) for these batch sizes")  # fmt: skip
    ap.add_argument("--batch-only", action="store_true",
                    help="only the batched section (no AR / B = 1 table / cost table)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.tiny:
        args.models, args.device = ["tiny"], "cpu"
        args.budgets, args.prompt_len, args.max_new_tokens = [8], 16, 12
        args.contexts, args.nodes, args.repeats, args.runs = [32, 64], [0, 1, 4], 2, 1
        args.block_size = 8
        torch.set_num_threads(1)  # tiny shapes: one thread is fastest and least noisy
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if sorted(set(args.nodes)) != args.nodes or sorted(set(args.contexts)) != args.contexts:
        raise ValueError("--nodes and --contexts must be strictly increasing")
    timer = Timer(args.device, args.repeats, args.inner)

    models = [bench_model(name, args, timer) for name in args.models]
    print(f"device {args.device}, dtype {args.dtype}, prompt {args.prompt_len}, "
          f"{args.max_new_tokens} new tokens, random weights, greedy")  # fmt: skip
    if args.batch_sizes:
        brows = [
            [m["model"], r["batch"], r["policy"], r["budget"], key[7:],
             r[key]["rounds_per_s"], f"{r[key]['ms_per_round']['median']:.3f}",
             r[key]["tokens_per_s"]]
            for m in models for r in m["batches"] for key in ("graphs_off", "graphs_on")
        ]  # fmt: skip
        print_table(["model", "B", "policy", "budget", "graphs", "batch rounds/s", "ms/round",
                     "tokens/s"], brows)  # fmt: skip
    if args.batch_only:
        payload = {"stamp": stamp(args.device), "args": vars(args), "models": models}
        path = write_json("bench_graph_round", payload, Path(args.out_dir))
        print("wrote", path)
        return path
    headers = ["model", "policy", "budget", "graphs", "rounds/s", "ms/round", "tau",
               "draft ms", "verify ms", "overhead ms", "overhead %"]  # fmt: skip
    rows = []
    for m in models:
        for key, on in (("ar_eager", "off"), ("ar", "on")):
            ar_ms = f"{m[key]['ms_per_round']['median']:.3f}"
            rows.append([m["model"], "ar", "-", on, m[key]["rounds_per_s"], ar_ms, "1.00",
                         "", "", "", ""])  # fmt: skip
        for r in m["runs"]:
            for key in ("graphs_off", "graphs_on"):
                g = r[key]
                on = key == "graphs_on"
                rows.append([
                    m["model"], r["policy"], r["budget"], "on" if on else "off",
                    g["rounds_per_s"], f"{g['ms_per_round']['median']:.3f}", f"{g['tau']:.2f}",
                    f"{r['draft_us']['median'] / 1e3:.3f}" if on and "draft_us" in r else "",
                    f"{r['verify_us']['median'] / 1e3:.3f}" if on and "verify_us" in r else "",
                    f"{r['overhead_ms']:.3f}" if on and "overhead_ms" in r else "",
                    f"{100 * r['overhead_frac']:.1f}" if on and "overhead_frac" in r else "",
                ])  # fmt: skip
    print_table(headers, rows)
    for m in models:
        t = m["cost_table"]
        print(f"{m['model']}: verify ms vs nodes {t['nodes']} -> {m['cost_table_path']}")
        for c, row in zip(t["contexts"], t["verify"][0]):
            print(f"  ctx {c}: " + " ".join(f"{v:.3f}" for v in row))
    payload = {"stamp": stamp(args.device), "args": vars(args), "models": models}
    path = write_json("bench_graph_round", payload, Path(args.out_dir))
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
