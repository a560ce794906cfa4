"""The ``difftree-rt`` command line: ``info``, ``demo``, ``demo-select``, ``generate``,
``bench``, ``train-drafter``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .args import UsageError, device_name, nonneg_int, positive_int

#: Set to 1 to see the traceback of an error the CLI reports as one line.
TRACEBACK_ENV = "DIFFTREE_RT_TRACEBACK"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to every option whose help does not state its default yet;
    flags (off unless given) and required options have none to state."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.required
            or action.default is argparse.SUPPRESS
            or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            or not action.option_strings
        ):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``difftree-rt CMD: error: ...``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's own prints the usage block first
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def describe(mod: ModuleType) -> str:
    """A module docstring as help text (no reStructuredText markup)."""
    return (mod.__doc__ or "").replace("``", "")


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
    from difftree_rt.cli.runtime import resolve_device

    args.device = resolve_device(args.device)
    return run_demo(
        vocab=args.vocab,
        depth=args.depth,
        budgets=args.budgets,
        device=args.device,
        repeats=args.repeats,
        seed=args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="difftree-rt", description="difftree_rt: speculative decoding with draft trees"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print what this build contains")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser(
        "demo-select", help="tree selection on realistic shapes: prints a tree and timings"
    )
    demo.add_argument("--vocab", type=positive_int, default=151936, help="V (Qwen3's)")
    demo.add_argument("--depth", type=positive_int, default=15, help="L = block size - 1")
    demo.add_argument(
        "--budgets", type=positive_int, nargs="+", default=[16, 64, 256, 1024], help="tree sizes"
    )
    demo.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda | cuda:N")
    demo.add_argument("--repeats", type=positive_int, default=20, help="timed runs per budget")
    demo.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random logits")
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
        p = sub.add_parser(name, help=help_text, description=describe(mod))
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
        p = sub.add_parser(name, help=help_text, description=describe(mod))
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user mistake (:class:`UsageError`, or a ``ValueError`` from the
    library's input checks) is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `difftree-rt info | head`: the reader is gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UsageError, ValueError, OSError) as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        message = str(exc).strip().replace("\n", " ") or type(exc).__name__
        print(f"difftree-rt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"difftree-rt {args.command}: interrupted", file=sys.stderr)
        return 130
