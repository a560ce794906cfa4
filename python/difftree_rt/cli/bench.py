"""``difftree-rt bench``: end-to-end τ, tokens/s and speedup over AR for several policies and
budgets on any local HF target + DFlash drafter, measured in one run (JSON + PNG plots).

Every setting runs once untimed (warm-up) and then ``--repeats`` timed times, the settings
interleaved so that drift in the machine's speed hits all of them alike; tokens/s and speedup
are reported as the median with the 10th and 90th percentiles over the repeats.
Without ``--target``/``--drafter`` it uses the shipped reference pair and its held-out prompts.
``--baseline CHECKOUT`` runs every setting on another checkout of difftree_rt too, interleaved
with this one, and reports both side by side (``scripts/bench_baseline.sh REV`` makes one).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .args import (
    POLICY_NAMES,
    add_device_options,
    add_pair_options,
    check_budgets,
    existing_file,
    out_dir,
    positive_int,
)
from .pair import (
    RunResult,
    default_vp_drafter,
    encode,
    load_pair,
    load_prompts,
    machine_line,
    plot_results,
    require_pair_dir,
    run_config,
    stop_ids,
    timestamp,
)
from .runtime import resolve_device, setup_threads

DEFAULT_BUDGETS = [16, 32, 64, 128, 256, 512]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_pair_options(p)
    p.add_argument(
        "--prompts",
        type=existing_file,
        help="JSON list or text file, one prompt per line (default: the shipped pair's)",
    )
    p.add_argument(
        "--num-prompts", type=positive_int, default=None, help="use the first N (default: all)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=96, help="tokens per prompt")
    p.add_argument(
        "--policies",
        nargs="+",
        choices=POLICY_NAMES,
        default=None,
        help="default: all of them",
    )
    p.add_argument(
        "--budgets", nargs="+", type=positive_int, default=DEFAULT_BUDGETS, help="draft nodes"
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed runs of every setting after its warm-up (median and p10/p90 reported)",
    )
    add_device_options(p)
    p.add_argument("--out", type=out_dir, default="build/cli_bench", help="JSON + PNG directory")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--baseline",
        type=baseline_checkout,
        default=None,
        metavar="CHECKOUT",
        help="also bench another source checkout of difftree_rt (its extension built inside it, "
        "e.g. by scripts/bench_baseline.sh REV), interleaved with this one: both tables side by "
        "side and the ratio current/baseline per setting (default: none)",
    )
    p.add_argument(
        "--cuda-graphs",
        choices=("auto", "off"),
        default="auto",
        help="auto: graph mode on CUDA for the policies it captures (see `info`); off: eager",
    )


def baseline_checkout(text: str) -> str:
    """``--baseline``: a directory holding ``python/difftree_rt`` and its built extension."""
    from .bench_worker import find_extension

    path = Path(text)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise argparse.ArgumentTypeError(f"{what}: {text} (expected a difftree_rt checkout)")
    if not (path / "python" / "difftree_rt" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text} has no python/difftree_rt (not a source checkout of difftree_rt)"
        )
    if find_extension(path) is None:
        raise argparse.ArgumentTypeError(
            f"{text} has no built extension for this Python (python/difftree_rt/_C*.so); "
            "scripts/bench_baseline.sh REV makes and builds such a checkout"
        )
    return str(path.resolve())


def configs_for(policies: list[str], budgets: list[int], depth: int) -> list[tuple[str, int]]:
    """(policy, budget) pairs: "ar" once, "chain" once at budget L, the others per budget."""
    out: list[tuple[str, int]] = [("ar", 0)] if "ar" in policies else []
    for pol in dict.fromkeys(policies):
        if pol == "ar":
            continue
        if pol == "chain":
            out.append(("chain", depth))
        else:
            out += [(pol, b) for b in dict.fromkeys(budgets)]
    return out


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, 10th percentile, 90th percentile), linearly interpolated."""
    import numpy as np

    p10, med, p90 = np.percentile(np.asarray(values, dtype=np.float64), [10, 50, 90])
    return float(med), float(p10), float(p90)


def summarize(runs: list[RunResult], ar_runs: list[RunResult] | None) -> dict[str, Any]:
    """One setting's row: the first repeat's counts (greedy: every repeat decodes the same
    tokens) and tokens/s and speedup over AR (repeat i against AR's repeat i) as median,
    p10, p90."""
    row = runs[0].as_dict()
    tps = [r.tokens_per_s for r in runs]
    row["repeats"] = len(runs)
    row["tokens_per_s"], row["tokens_per_s_p10"], row["tokens_per_s_p90"] = spread(tps)
    row["tokens_per_s_runs"] = tps
    row["total_s"] = spread([r.total_s for r in runs])[0]
    row["same_tokens_every_repeat"] = all(r.texts == runs[0].texts for r in runs)
    if ar_runs:
        ratios = [
            r.tokens_per_s / a.tokens_per_s if a.tokens_per_s else 0.0
            for r, a in zip(runs, ar_runs)
        ]
        row["speedup_vs_ar"], row["speedup_p10"], row["speedup_p90"] = spread(ratios)
        row["identical_to_ar"] = all(r.texts == ar_runs[0].texts for r in runs)
    else:
        row["speedup_vs_ar"] = row["speedup_p10"] = row["speedup_p90"] = None
    return row


def _describe_model(path: str, module: Any) -> str:
    """``reference_pair/target (qwen3, 25.0M params)``."""
    p = Path(path).resolve()
    n = sum(t.numel() for t in module.parameters())
    size = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
    kind = getattr(getattr(module, "config", None), "model_type", None) or type(module).__name__
    return f"{p.parent.name}/{p.name} ({kind}, {size} params)"


def versions() -> dict[str, Any]:
    """difftree_rt (version, git sha, CUDA build), torch, transformers, python."""
    import transformers

    from difftree_rt.info import build_info

    info = build_info()
    keep = ("version", "git_sha", "cuda_compiled", "torch", "torch_cuda_available", "python")
    out = {k: info.get(k) for k in keep}
    out["transformers"] = transformers.__version__
    return out


@dataclass
class Inputs:
    """What a bench run measures: model directories, prompt texts, device, threads line."""

    target: str
    drafter: str
    vp_drafter: str | None
    texts: list[str]
    device: str
    threads: str


def _inputs(args: argparse.Namespace) -> Inputs:
    need_pair = not (args.target and args.drafter and args.prompts)
    pair_dir = require_pair_dir() if need_pair else None
    target = args.target or str(pair_dir / "target")
    drafter = args.drafter or str(pair_dir / "drafter")
    prompts_path = args.prompts or str(pair_dir / "prompts.json")
    texts = load_prompts(prompts_path, "--prompts")[: args.num_prompts]
    device = resolve_device(args.device)
    check_budgets(args.budgets, "--budgets")
    threads = setup_threads(args.threads, device, [target, drafter])
    vp = default_vp_drafter(args.drafter, args.vp_drafter, pair_dir) if pair_dir else None
    return Inputs(target, drafter, vp or args.vp_drafter, texts, device, threads)


def run(args: argparse.Namespace) -> int:
    if args.baseline is not None:
        from .bench_baseline import run_side_by_side

        return run_side_by_side(args, _inputs(args))
    inp = _inputs(args)
    target, drafter, texts, device, threads = (
        inp.target, inp.drafter, inp.texts, inp.device, inp.threads
    )  # fmt: skip
    pair = load_pair(target, drafter, device, args.dtype, inp.vp_drafter)
    prompts = [encode(pair, t, device) for t in texts]
    policies = args.policies or ["ar", *sorted(POLICY_NAMES[1:])]
    configs = configs_for(policies, args.budgets, pair.drafter.block_size - 1)
    stop = stop_ids(pair)
    dtype = str(pair.target.dtype).removeprefix("torch.")
    target_desc = _describe_model(target, pair.target)
    drafter_desc = _describe_model(drafter, pair.drafter)
    print(
        f"target {target_desc}, drafter {drafter_desc}; {len(prompts)} prompts x <= "
        f"{args.max_new_tokens} new tokens, greedy; {device} {dtype}, {threads}; "
        f"{args.repeats} timed repeats after a warm-up",
        flush=True,
    )
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(configs) * args.repeats, desc="bench", dynamic_ncols=True)
    runs: dict[tuple[str, int], list[RunResult]] = {c: [] for c in configs}
    graphs = False if args.cuda_graphs == "off" else None
    for rep in range(args.repeats):
        for pol, budget in configs:
            if bar is not None:
                bar.set_postfix_str(f"{pol} {budget or ''} (repeat {rep + 1})")
            runs[(pol, budget)].append(
                run_config(
                    pair, pol, budget, prompts, args.max_new_tokens, stop=stop, cuda_graphs=graphs
                )
            )
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    ar_runs = runs.get(("ar", 0))
    results = [summarize(runs[c], ar_runs) for c in configs]
    machine = machine_line(device)
    print(format_table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ar_tps = results[0]["tokens_per_s"] if ar_runs else None
    payload = {
        "when": timestamp(),
        "machine": machine,
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "versions": versions(),
        "target": target,
        "drafter": drafter,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "statistic": "median (p10, p90) over repeats, after one untimed warm-up per setting",
        "cuda_graphs": args.cuda_graphs,
        "results": results,
    }
    (out / "bench.json").write_text(json.dumps(payload, indent=2))
    written = [out / "bench.json"]
    if not args.no_plots:
        ar_text = f"AR {ar_tps:.1f} tokens/s" if ar_tps else "no AR run"
        title = (
            f"target {target_desc}, drafter {drafter_desc}\n"
            f"{device} {dtype}, {threads.split(' (')[0]}; {len(prompts)} prompts x "
            f"{args.max_new_tokens} tokens; {ar_text}; median, p10-p90 of {args.repeats}\n"
            f"{machine}"
        )
        written += plot_results(results, out, title)
    print("wrote", ", ".join(str(p) for p in written))
    return 0


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: policy, budget, τ, tokens/s and speedup (median [p10, p90])."""
    lines = [
        "| policy | budget | τ | tokens/s [p10, p90] | speedup [p10, p90] |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        sp = r.get("speedup_vs_ar")
        tps = f"{r['tokens_per_s']:.1f} [{r['tokens_per_s_p10']:.1f}, {r['tokens_per_s_p90']:.1f}]"
        spt = f"{sp:.2f}x [{r['speedup_p10']:.2f}, {r['speedup_p90']:.2f}]" if sp else "-"
        lines.append(f"| {r['policy']} | {r['budget'] or '-'} | {r['tau']:.2f} | {tps} | {spt} |")
    return "\n".join(lines)
