"""``difftree-rt demo``: speculative decoding of the shipped reference pair, live.

Loads ``assets/reference_pair`` (a small Qwen3 target trained on the Python standard library and
its DFlash drafter), streams the code it writes for a few held-out prompts with the best policy,
then decodes the same prompts with the target alone (AR, progress bar) and prints τ, tokens/s
and the speedup measured in this run. Without the pair it says so and runs the tree-selection
demo (``difftree-rt demo-select``) instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .args import (
    POLICY_NAMES,
    add_device_options,
    check_budgets,
    nonneg_int,
    positive_int,
)
from .pair import (
    encode,
    find_pair_dir,
    incremental_decoder,
    load_pair,
    load_prompts,
    machine_line,
    pair_available,
    run_config,
    stop_ids,
)
from .runtime import resolve_device, setup_threads

DIM, BOLD, GREEN, RESET = "\033[2m", "\033[1m", "\033[32m", "\033[0m"


def pair_dir_arg(text: str) -> str:
    """``--pair``: a directory holding ``target/`` and ``drafter/`` model directories."""
    if not pair_available(Path(text)):
        raise argparse.ArgumentTypeError(
            f"{text} holds no target/ and drafter/ model directories (not a pair)"
        )
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", type=pair_dir_arg, default=None,
                   help="pair directory (default: the shipped one)")  # fmt: skip
    p.add_argument(
        "--policy",
        choices=POLICY_NAMES[1:],
        default=None,
        help="draft policy (default: auto, which measures every round whether drafting pays "
        "and which tree size to verify)",
    )
    p.add_argument(
        "--budget",
        type=positive_int,
        default=None,
        help="draft nodes per round (auto: the largest tree; default: 64)",
    )
    p.add_argument("--num-prompts", type=positive_int, default=3, help="prompts to decode")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens per prompt")
    add_device_options(p)
    p.add_argument("--no-color", action="store_true", help="no ANSI colours")
    p.add_argument("--prompt-lines", type=nonneg_int, default=6, help="prompt lines shown")
    # The options of the former selection demo (now ``demo-select``): passing any of them runs
    # that demo, so existing command lines keep working.
    for flag in ("--vocab", "--depth", "--repeats"):
        p.add_argument(flag, type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=nonneg_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--budgets", type=positive_int, nargs="+", default=None, help=argparse.SUPPRESS)


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


def run(args: argparse.Namespace) -> int:
    legacy = (args.vocab, args.depth, args.repeats, args.seed, args.budgets)
    if any(v is not None for v in legacy):
        return _selection_demo(args, resolve_device(args.device))
    pair_dir = Path(args.pair) if args.pair else find_pair_dir()
    if pair_dir is None:
        print(
            "No trained reference pair found (expected target/ and drafter/ in the installed "
            "package or the source tree).\n"
            "Falling back to the tree-selection demo (difftree-rt demo-select).\n"
            "Train a pair with: python scripts/train_reference_pair.py (see its --help).\n"
        )
        return _selection_demo(args, "cpu")
    texts = load_prompts(pair_dir / "prompts.json", "--pair")[: args.num_prompts]
    policy = args.policy or "auto"
    budget = args.budget or 64
    device = resolve_device(args.device)
    check_budgets([budget], "--budget")
    threads = setup_threads(args.threads, device, [pair_dir / "target", pair_dir / "drafter"])
    color = sys.stdout.isatty() and not args.no_color
    dim, bold, green, reset = (DIM, BOLD, GREEN, RESET) if color else ("", "", "", "")

    print(f"{bold}difftree_rt demo{reset}: loading {pair_dir} on {device} ...", flush=True)
    pair = load_pair(pair_dir / "target", pair_dir / "drafter", device, args.dtype)
    n_t = sum(p.numel() for p in pair.target.parameters()) / 1e6
    n_d = sum(p.numel() for p in pair.drafter.parameters()) / 1e6
    print(
        f"target: Qwen3 {n_t:.1f}M params ({pair.target.config.num_hidden_layers} layers), "
        f"drafter: DFlash {n_d:.1f}M params, block {pair.drafter.block_size}; "
        f"policy {policy}, budget {budget}; greedy (lossless: same text as the target alone)"
    )
    print(f"machine: {machine_line(device)}\nthreads: {threads}\n")
    prompts = [encode(pair, t, device) for t in texts]
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
    if spec.modes:
        print(f"auto chose: {spec.modes_line()} of {sum(spec.modes.values())} rounds")
    return 0 if same else 1
