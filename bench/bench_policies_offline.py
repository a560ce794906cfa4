"""Offline policy comparison on identical rounds: record a trace with a large verified DDTree,
then score chain / ddtree / caddtree / presto x budgets without re-running the target.

    python bench/bench_policies_offline.py --pair trained --record-budget 256 --budgets 4 16 64 256

``--pair trained``: the engine tests' tiny Qwen3 target (V=32, random weights) with a DFlash
drafter trained in-process on its greedy continuations (tests/engine/engine_helpers.py);
``--pair random``: a random V=128 target with a random drafter. Both are random-weight models:
the numbers compare policies on the same rounds, they are not a published pair's numbers.
Writes the trace (``--trace``) and a JSON table under bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from bench.common import stamp, write_json  # noqa: E402
from difftree_rt.eval import TraceRecorder, evaluate, format_table  # noqa: E402
from difftree_rt.eval.offline import rows_as_dicts  # noqa: E402
from difftree_rt.policies import load_cost_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pair", choices=["trained", "random"], default="trained")
    ap.add_argument("--record-budget", type=int, default=256)
    ap.add_argument("--budgets", type=int, nargs="+", default=[4, 16, 64, 256])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--lam", type=float, nargs="+", default=[0.2, 1.0])
    ap.add_argument("--cost-table", default=None)
    ap.add_argument("--trace", default="/tmp/difftree_trace.pt")
    args = ap.parse_args()

    import engine_helpers as eh

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    target, drafter = eh.trained_pair() if args.pair == "trained" else eh.random_pair("qwen3")
    vocab = int(target.config.vocab_size)
    rec = TraceRecorder(target, drafter, budget=args.record_budget, max_length=1024)
    gen = torch.Generator().manual_seed(0)
    taus = []
    for i in range(args.prompts):
        prompt = torch.randint(0, vocab, (1, 3 + 5 * i), generator=gen)
        taus.append(rec.generate(prompt, args.new).stats.tau)
    rec.trace.save(args.trace)
    t_rec = time.perf_counter() - t0
    table = load_cost_table(args.cost_table)
    results = []
    t1 = time.perf_counter()
    base = evaluate(rec.trace, ["chain", "ddtree", "caddtree"], args.budgets, table)
    results += base
    print(f"pair={args.pair} V={vocab} rounds={len(rec.trace.rounds)} "
          f"live τ (ddtree@{args.record_budget}) = {sum(taus) / len(taus):.3f}; cost unit "
          f"{table.unit}")  # fmt: skip
    print(format_table(base))
    for lam in args.lam:
        rows = evaluate(rec.trace, ["presto"], args.budgets, table, {"lam": lam})
        for r in rows:
            r.policy = f"presto{lam:g}"
        results += rows
        print(format_table(rows).split("\n", 2)[2])
    t_eval = time.perf_counter() - t1
    print(f"record {t_rec:.1f} s, evaluate {t_eval:.1f} s")
    write_json(
        "bench_policies_offline",
        {
            "stamp": stamp("cpu"),
            "args": vars(args),
            "live_tau": taus,
            "cost_table": table.to_dict(),
            "rows": rows_as_dicts(results),
        },
    )


if __name__ == "__main__":
    main()
