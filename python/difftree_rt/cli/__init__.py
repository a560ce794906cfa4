"""The ``difftree-rt`` command line: ``info``, ``demo``, ``demo-select``, ``generate``,
``bench``, ``train-drafter``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from difftree_rt.info import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from difftree_rt.cli.demo_select import run_demo

    return run_demo(
        vocab=args.vocab,
        depth=args.depth,
        budgets=args.budgets,
        device=args.device,
        repeats=args.repeats,
        seed=args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difftree-rt", description="difftree_rt: speculative decoding with draft trees"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print what this build contains")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser(
        "demo-select", help="tree selection on realistic shapes: prints a tree and timings"
    )
    demo.add_argument("--vocab", type=int, default=151936, help="V (default: Qwen3's)")
    demo.add_argument("--depth", type=int, default=15, help="L = block size - 1")
    demo.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 256, 1024])
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--repeats", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    _add_e2e_commands(sub)
    _add_policy_commands(sub)
    return parser


def _add_e2e_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``demo`` (the shipped pair, live), ``generate``, ``bench``, ``train-drafter``."""
    import importlib

    commands = {
        "demo": ("demo", "the shipped reference pair: streamed code, τ, tokens/s, speedup"),
        "generate": ("generate", "speculative decoding of one prompt (any local HF target)"),
        "bench": ("bench", "τ / tokens/s / speedup vs budget for several policies (JSON, PNG)"),
        "train-drafter": ("train_drafter", "train a DFlash drafter for a local HF target"),
    }
    for name, (module, help_text) in commands.items():
        mod = importlib.import_module(f"difftree_rt.cli.{module}")
        p = sub.add_parser(name, help=help_text, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)


def _add_policy_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``profile-cost`` (CaDDTree cost tables), ``eval-policies`` (offline policy scores)."""
    from difftree_rt.cli import eval_policies, profile_cost, record_trace, train_scorer

    commands = {
        "profile-cost": (profile_cost, "measure verify/draft cost, write a CaDDTree cost table"),
        "record-trace": (record_trace, "generate with a large DDTree, record rounds for eval"),
        "eval-policies": (eval_policies, "policies x budgets on a recorded trace: τ, tokens/cost"),
        "train-scorer": (train_scorer, "fit the TAPS edge scorer on recorded traces"),
    }
    for name, (mod, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
