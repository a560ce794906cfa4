"""``difftree-rt demo``: speculative decoding of the shipped reference pair, live.

Loads ``assets/reference_pair`` (a small Qwen3 target trained on the Python standard library and
its DFlash drafter), streams the code it writes for a few held-out prompts with the best policy,
then decodes the same prompts with the target alone (AR, progress bar) and prints τ, tokens/s
and the speedup measured in this run. Without the pair it says so and runs the tree-selection
demo (``difftree-rt demo-select``) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .pair import (
    default_pair_dir,
    encode,
    incremental_decoder,
    load_pair,
    load_prompts,
    machine_line,
    pair_available,
    run_config,
    stop_ids,
)

DIM, BOLD, GREEN, RESET = "\033[2m", "\033[1m", "\033[32m", "\033[0m"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", default=None, help="pair directory (default: the shipped one)")
    p.add_argument("--policy", default=None, help="default: the best one in the pair's card")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--num-prompts", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-color", action="store_true")
    p.add_argument("--prompt-lines", type=int, default=6, help="prompt lines shown")
    # The options of the former selection demo (now ``demo-select``): passing any of them runs
    # that demo, so existing command lines keep working.
    for flag, kind in (("--vocab", int), ("--depth", int), ("--repeats", int), ("--seed", int)):
        p.add_argument(flag, type=kind, default=None, help=argparse.SUPPRESS)
    p.add_argument("--budgets", type=int, nargs="+", default=None, help=argparse.SUPPRESS)


def _selection_demo(args: argparse.Namespace, device: str) -> int:
    from .demo_select import run_demo

    return run_demo(
        vocab=args.vocab or 151936,
        depth=args.depth or 15,
        budgets=args.budgets or [16, 64, 256, 1024],
        device=device,
        repeats=args.repeats or 20,
        seed=args.seed or 0,
    )


def _best(pair_dir: Any) -> tuple[str, int]:
    """(policy, budget) with the highest measured speedup in the pair's results, else ddtree/64."""
    path = pair_dir / "bench.json"
    try:
        rows = json.loads(path.read_text())["results"]
        best = max(
            (r for r in rows if r["policy"] != "ar"), key=lambda r: r.get("speedup_vs_ar") or 0
        )
        return str(best["policy"]), int(best["budget"])
    except (OSError, KeyError, ValueError):
        return "ddtree", 64


def run(args: argparse.Namespace) -> int:
    import torch

    from .pair import resolve_device

    args.device = resolve_device(args.device)
    from pathlib import Path

    legacy = (args.vocab, args.depth, args.repeats, args.seed, args.budgets)
    if any(v is not None for v in legacy):
        return _selection_demo(args, args.device)
    pair_dir = Path(args.pair) if args.pair else default_pair_dir()
    if not pair_available(pair_dir):
        print(
            f"No trained reference pair at {pair_dir} (expected target/ and drafter/ there).\n"
            "Falling back to the tree-selection demo (difftree-rt demo-select).\n"
            "Train a pair with: python scripts/train_reference_pair.py (see its --help).\n"
        )
        return _selection_demo(args, "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    color = sys.stdout.isatty() and not args.no_color
    dim, bold, green, reset = (DIM, BOLD, GREEN, RESET) if color else ("", "", "", "")
    best_policy, best_budget = _best(pair_dir)
    policy = args.policy or best_policy
    budget = args.budget or (best_budget if args.policy in (None, best_policy) else 64)

    print(f"{bold}difftree_rt demo{reset}: loading {pair_dir} on {args.device} ...", flush=True)
    pair = load_pair(pair_dir / "target", pair_dir / "drafter", args.device, args.dtype)
    n_t = sum(p.numel() for p in pair.target.parameters()) / 1e6
    n_d = sum(p.numel() for p in pair.drafter.parameters()) / 1e6
    print(
        f"target: Qwen3 {n_t:.1f}M params ({pair.target.config.num_hidden_layers} layers), "
        f"drafter: DFlash {n_d:.1f}M params, block {pair.drafter.block_size}; "
        f"policy {policy}, budget {budget}; greedy (lossless: same text as the target alone)"
    )
    print(f"machine: {machine_line(args.device)}\n")
    texts = load_prompts(pair_dir / "prompts.json")[: args.num_prompts]
    prompts = [encode(pair, t, args.device) for t in texts]
    stop = stop_ids(pair)

    decoders: list[Any] = []
    state = {"current": -1}

    def show(i: int, new: list[int]) -> None:
        if state["current"] != i:
            if state["current"] >= 0:
                print("\n")
            state["current"] = i
            decoders.append(incremental_decoder(pair.tokenizer))
            shown = "\n".join(texts[i].splitlines()[-args.prompt_lines :])
            print(f"{bold}── prompt {i + 1}/{len(texts)} (held-out stdlib file){reset}")
            print(f"{dim}{shown}{reset}", end="")
        sys.stdout.write(green + decoders[-1](new) + reset)
        sys.stdout.flush()

    spec = run_config(pair, policy, budget, prompts, args.max_new_tokens, stop=stop, on_tokens=show)
    print("\n")
    from tqdm import tqdm

    total = spec.tokens
    with tqdm(total=total, desc="AR baseline (target alone)", unit="tok") as bar:
        ar = run_config(
            pair,
            "ar",
            0,
            prompts,
            args.max_new_tokens,
            stop=stop,
            on_tokens=lambda _i, new: bar.update(len(new)),
        )
    same = ar.texts == spec.texts
    speedup = spec.tokens_per_s / ar.tokens_per_s if ar.tokens_per_s else 0.0
    print(
        f"\n{bold}{policy} budget {budget}{reset}: τ = {spec.tau:.2f} tokens/round, "
        f"{spec.tokens_per_s:.1f} tokens/s   |   AR: {ar.tokens_per_s:.1f} tokens/s   |   "
        f"{bold}speedup {speedup:.2f}x{reset}   ({spec.tokens} tokens, {spec.rounds} rounds; "
        f"output identical to AR: {'yes' if same else 'NO'})"
    )
    return 0 if same else 1
