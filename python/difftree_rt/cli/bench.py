"""``difftree-rt bench``: end-to-end τ, tokens/s and speedup over AR for several policies and
budgets on any local HF target + DFlash drafter, measured in one run (JSON + PNG plots).

Without ``--target``/``--drafter`` it uses the shipped reference pair and its held-out prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .pair import (
    default_pair_dir,
    default_vp_drafter,
    encode,
    load_pair,
    load_prompts,
    machine_line,
    pair_available,
    plot_results,
    run_config,
    stop_ids,
    timestamp,
)

DEFAULT_BUDGETS = [16, 32, 64, 128, 256, 512]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="local HF causal LM directory (default: the shipped pair)")
    p.add_argument("--drafter", help="local DFlash drafter directory (default: the shipped pair)")
    p.add_argument(
        "--vp-drafter",
        default=None,
        help="d2sd's second (variable-prefix) drafter (default: the shipped pair's, if any)",
    )
    p.add_argument("--prompts", help="JSON list or text file, one prompt per line")
    p.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--policies", nargs="+", default=None, help="default: ar + every registered")
    p.add_argument("--budgets", nargs="+", type=int, default=DEFAULT_BUDGETS)
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 | float16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="build/cli_bench", help="JSON + PNG directory")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--cuda-graphs",
        choices=("auto", "off"),
        default="auto",
        help="auto: graph mode on CUDA for the policies it captures (see `info`); off: eager",
    )


def configs_for(policies: list[str], budgets: list[int], depth: int) -> list[tuple[str, int]]:
    """(policy, budget) pairs: "ar" once, "chain" once at budget L, the others per budget."""
    out: list[tuple[str, int]] = [("ar", 0)] if "ar" in policies else []
    for pol in policies:
        if pol == "ar":
            continue
        if pol == "chain":
            out.append(("chain", depth))
        else:
            out += [(pol, b) for b in budgets]
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from .pair import resolve_device

    args.device = resolve_device(args.device)
    from difftree_rt.engine import POLICIES

    if args.threads:
        torch.set_num_threads(args.threads)
    pair_dir = default_pair_dir()
    target = args.target or str(pair_dir / "target")
    drafter = args.drafter or str(pair_dir / "drafter")
    if not args.target and not pair_available(pair_dir):
        print(f"no --target given and no shipped pair at {pair_dir}")
        return 2
    vp = default_vp_drafter(args.drafter, args.vp_drafter, pair_dir)
    pair = load_pair(target, drafter, args.device, args.dtype, vp)
    prompts_path = args.prompts or (pair_dir / "prompts.json")
    texts = load_prompts(prompts_path)[: args.num_prompts]
    prompts = [encode(pair, t, args.device) for t in texts]
    policies = args.policies or ["ar", *sorted(POLICIES)]
    configs = configs_for(policies, args.budgets, pair.drafter.block_size - 1)
    stop = stop_ids(pair)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(configs), desc="bench", dynamic_ncols=True)
    results: list[dict[str, Any]] = []
    ar_texts: list[str] | None = None
    graphs = False if args.cuda_graphs == "off" else None
    for pol, budget in configs:
        if bar is not None:
            bar.set_postfix_str(f"{pol} {budget or ''}")
        r = run_config(
            pair, pol, budget, prompts, args.max_new_tokens, stop=stop, cuda_graphs=graphs
        )
        row = r.as_dict()
        if pol == "ar":
            ar_texts = r.texts
        if ar_texts is not None:
            row["identical_to_ar"] = r.texts == ar_texts
        results.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    base = next((r["tokens_per_s"] for r in results if r["policy"] == "ar"), None)
    for r in results:
        r["speedup_vs_ar"] = r["tokens_per_s"] / base if base else None
    machine = machine_line(args.device)
    print(
        f"target {target}, drafter {drafter}; {len(prompts)} prompts x <= "
        f"{args.max_new_tokens} new tokens, greedy; {args.device} {pair.target.dtype}; {machine}"
    )
    print(format_table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": timestamp(),
        "machine": machine,
        "device": args.device,
        "dtype": str(pair.target.dtype),
        "target": target,
        "drafter": drafter,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "cuda_graphs": args.cuda_graphs,
        "results": results,
    }
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    written = [out / "bench.json"]
    if not args.no_plots:
        written += plot_results(results, out, f"{Path(target).name}: {machine}")
    print("wrote", ", ".join(str(p) for p in written))
    return 0


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: policy, budget, τ, tokens/s, speedup."""
    lines = ["| policy | budget | τ | tokens/s | speedup |", "|---|---:|---:|---:|---:|"]
    for r in results:
        sp = r.get("speedup_vs_ar")
        lines.append(
            f"| {r['policy']} | {r['budget'] or '-'} | {r['tau']:.2f} | "
            f"{r['tokens_per_s']:.1f} | {f'{sp:.2f}x' if sp else '-'} |"
        )
    return "\n".join(lines)
