"""``difftree-rt eval-policies TRACE``: policies x budgets on recorded rounds (no target runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import existing_file, nonneg_float, out_file, positive_float, positive_int

#: eval-policies scores the drafting policies (``difftree_rt.eval.offline.POLICY_NAMES``).
OFFLINE_POLICIES = ("chain", "ddtree", "caddtree", "presto", "taps", "d2sd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "trace", type=existing_file, help="a trace .safetensors file (difftree-rt record-trace)"
    )
    p.add_argument(
        "--policies",
        nargs="+",
        choices=OFFLINE_POLICIES,
        default=None,
        help="default: chain ddtree caddtree presto taps, and d2sd when the trace has its drafts",
    )
    p.add_argument(
        "--budgets", type=positive_int, nargs="+", default=[8, 32, 128], help="draft nodes"
    )
    p.add_argument(
        "--cost-table", type=existing_file, default=None, help="cost table JSON (default: analytic)"
    )
    p.add_argument("--lam", type=nonneg_float, default=0.2, help="presto λ")
    p.add_argument("--order", type=positive_int, default=3, help="presto n-gram order")
    p.add_argument("--alpha", type=positive_float, default=1.0, help="presto smoothing mass")
    p.add_argument(
        "--taps-scorer",
        type=existing_file,
        default=None,
        help="taps edge scorer .safetensors (train-scorer; default: the training-free fallback)",
    )
    p.add_argument("--d2sd-k", type=positive_int, default=4, help="d2sd branches per round")
    p.add_argument(
        "--d2sd-published",
        action="store_true",
        help="d2sd keeps the second pass's top-1 at the boundary (default: the best other token)",
    )
    p.add_argument(
        "--out", type=out_file, default=None, help="write the table as JSON here (default: don't)"
    )


def run(args: argparse.Namespace) -> int:
    from difftree_rt.eval import Trace, evaluate, format_table
    from difftree_rt.eval.offline import rows_as_dicts

    from .args import check_budgets

    check_budgets(args.budgets, "--budgets")
    trace = Trace.load(args.trace)
    policies = args.policies or ["chain", "ddtree", "caddtree", "presto", "taps"] + (
        ["d2sd"] if trace.meta.get("d2sd") else []
    )
    options = {
        "lam": args.lam,
        "order": args.order,
        "alpha": args.alpha,
        "scorer": args.taps_scorer,
        "k": args.d2sd_k,
        "alternative": not args.d2sd_published,
    }
    rows = evaluate(
        trace, policies=policies, budgets=args.budgets, cost_table=args.cost_table, options=options
    )
    print(f"trace {args.trace}: {len(trace.rounds)} rounds, {len(trace.sequences)} sequences, "
          f"recorded budget {trace.meta.get('record_budget')}")  # fmt: skip
    print(format_table(rows))
    if args.out:
        payload = {
            "trace": str(args.trace),
            "trace_meta": trace.meta,
            "cost_table": args.cost_table or "default",
            "options": options,
            "rows": rows_as_dicts(rows),
        }
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
